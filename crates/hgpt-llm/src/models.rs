//! Known context window sizes of common OpenAI-compatible model names.

/// The context window (prompt plus completion, in tokens) of a well-known
/// model, or `None` when the name is not one this table is sure about.
///
/// Matching ignores case, a leading `org/` (as in Hugging Face ids such as
/// `meta-llama/Meta-Llama-3-8B-Instruct`), an Ollama-style `:tag`, and dated
/// snapshot suffixes (`gpt-4o-2024-08-06`).
pub fn context_window(model: &str) -> Option<usize> {
    let lower = model.trim().to_ascii_lowercase();
    let name = lower.rsplit('/').next().unwrap_or(&lower);
    let name = name.split(':').next().unwrap_or(name);
    let name = name.strip_prefix("meta-").unwrap_or(name);
    openai(name)
        .or_else(|| llama(name))
        .or_else(|| qwen(name))
        .or_else(|| mistral(name))
}

/// Whether `name` is `base` or `base` followed by `-suffix`.
fn is_family(name: &str, base: &str) -> bool {
    name == base
        || name
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('-'))
}

fn openai(name: &str) -> Option<usize> {
    let name = name
        .strip_prefix("chatgpt-")
        .map_or(name.to_string(), |n| format!("gpt-{n}"));
    let name = name.as_str();
    if is_family(name, "gpt-4.1") {
        return Some(1_047_576);
    }
    if is_family(name, "gpt-4o") {
        return Some(128_000);
    }
    if is_family(name, "gpt-4-turbo")
        || matches!(
            name,
            "gpt-4-1106-preview" | "gpt-4-0125-preview" | "gpt-4-vision-preview"
        )
    {
        return Some(128_000);
    }
    if is_family(name, "gpt-4-32k") {
        return Some(32_768);
    }
    if matches!(name, "gpt-4" | "gpt-4-0613" | "gpt-4-0314") {
        return Some(8_192);
    }
    if is_family(name, "gpt-3.5-turbo") {
        return match name {
            "gpt-3.5-turbo-instruct" | "gpt-3.5-turbo-0613" | "gpt-3.5-turbo-0301" => Some(4_096),
            _ if name.starts_with("gpt-3.5-turbo-instruct") => Some(4_096),
            _ => Some(16_385),
        };
    }
    if is_family(name, "o1-mini") || is_family(name, "o1-preview") {
        return Some(128_000);
    }
    if is_family(name, "o1") || is_family(name, "o3") || is_family(name, "o4-mini") {
        return Some(200_000);
    }
    None
}

fn llama(name: &str) -> Option<usize> {
    // "llama3.1-8b" (Ollama) and "llama-3.1-8b-instruct" (Meta) both occur.
    let rest = name
        .strip_prefix("llama-3")
        .or_else(|| name.strip_prefix("llama3"))?;
    if [".1", ".2", ".3"]
        .iter()
        .any(|minor| rest.starts_with(minor))
    {
        return Some(131_072);
    }
    // Plain Llama 3 (8B / 70B): "llama-3", "llama-3-8b-instruct", "llama3:70b".
    if rest.is_empty() || rest.starts_with('-') {
        return Some(8_192);
    }
    None
}

fn qwen(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("qwen2.5")?;
    if !(rest.is_empty() || rest.starts_with('-')) {
        return None;
    }
    // The long-context variants (`-1m`, `turbo`) differ; be sure or say nothing.
    if rest.contains("1m") || rest.contains("turbo") {
        return None;
    }
    Some(32_768)
}

fn mistral(name: &str) -> Option<usize> {
    if is_family(name, "mixtral-8x7b") {
        return Some(32_768);
    }
    if is_family(name, "mixtral-8x22b") {
        return Some(65_536);
    }
    if let Some(rest) = name.strip_prefix("mistral-7b") {
        if rest.contains("v0.1") {
            return Some(8_192);
        }
        if rest.contains("v0.2") || rest.contains("v0.3") {
            return Some(32_768);
        }
        return None;
    }
    if is_family(name, "mistral-nemo")
        || matches!(
            name,
            "mistral-large-2407" | "mistral-large-2411" | "mistral-large-latest"
        )
    {
        return Some(131_072);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::context_window;

    #[test]
    fn openai_models() {
        assert_eq!(context_window("gpt-4o"), Some(128_000));
        assert_eq!(context_window("gpt-4o-mini"), Some(128_000));
        assert_eq!(context_window("GPT-4o-2024-08-06"), Some(128_000));
        assert_eq!(context_window("chatgpt-4o-latest"), Some(128_000));
        assert_eq!(context_window("gpt-4.1"), Some(1_047_576));
        assert_eq!(context_window("gpt-4.1-mini"), Some(1_047_576));
        assert_eq!(context_window("gpt-4.1-nano-2025-04-14"), Some(1_047_576));
        assert_eq!(context_window("gpt-4-turbo"), Some(128_000));
        assert_eq!(context_window("gpt-4-turbo-2024-04-09"), Some(128_000));
        assert_eq!(context_window("gpt-4-1106-preview"), Some(128_000));
        assert_eq!(context_window("gpt-4"), Some(8_192));
        assert_eq!(context_window("gpt-4-0613"), Some(8_192));
        assert_eq!(context_window("gpt-4-32k"), Some(32_768));
        assert_eq!(context_window("gpt-3.5-turbo"), Some(16_385));
        assert_eq!(context_window("gpt-3.5-turbo-0125"), Some(16_385));
        assert_eq!(context_window("gpt-3.5-turbo-16k"), Some(16_385));
        assert_eq!(context_window("gpt-3.5-turbo-instruct"), Some(4_096));
        assert_eq!(context_window("o1"), Some(200_000));
        assert_eq!(context_window("o1-mini"), Some(128_000));
        assert_eq!(context_window("o3-mini"), Some(200_000));
        assert_eq!(context_window("o3"), Some(200_000));
        assert_eq!(context_window("o4-mini"), Some(200_000));
    }

    #[test]
    fn open_models() {
        assert_eq!(
            context_window("meta-llama/Meta-Llama-3-8B-Instruct"),
            Some(8_192)
        );
        assert_eq!(context_window("llama3:70b"), Some(8_192));
        assert_eq!(
            context_window("meta-llama/Llama-3.1-8B-Instruct"),
            Some(131_072)
        );
        assert_eq!(context_window("llama3.2:3b"), Some(131_072));
        assert_eq!(context_window("llama-3.3-70b-versatile"), Some(131_072));
        assert_eq!(context_window("Qwen/Qwen2.5-7B-Instruct"), Some(32_768));
        assert_eq!(context_window("qwen2.5:14b"), Some(32_768));
        assert_eq!(context_window("Qwen/Qwen2.5-7B-Instruct-1M"), None);
        assert_eq!(
            context_window("mistralai/Mistral-7B-Instruct-v0.1"),
            Some(8_192)
        );
        assert_eq!(
            context_window("mistralai/Mistral-7B-Instruct-v0.3"),
            Some(32_768)
        );
        assert_eq!(
            context_window("mistralai/Mixtral-8x7B-Instruct-v0.1"),
            Some(32_768)
        );
        assert_eq!(context_window("mistral-nemo"), Some(131_072));
    }

    #[test]
    fn unknown_models() {
        assert_eq!(context_window(""), None);
        assert_eq!(context_window("my-finetune"), None);
        assert_eq!(context_window("gpt-4.5-preview"), None);
        assert_eq!(context_window("gpt-40"), None);
        assert_eq!(context_window("o10"), None);
        assert_eq!(context_window("llama-30b"), None);
        assert_eq!(context_window("qwen2.50"), None);
    }
}
