// Real-browser test of the hgpt web UI: playwright-core drives Debian's
// chromium (headless, $CHROMIUM, default /usr/bin/chromium) against a running
// `hgpt serve` with the fake backends at $HGPT_URL (see run.sh, which starts
// both). It sends a multi-step request, waits for every graph node to reach
// "done", checks an image output and the streamed answer, the past-runs list
// and its replay, the phone layout and an upload, and saves screenshots in
// $SCREENSHOT_DIR (default target/browser). Exit 0 on success, 1 on failure.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { makePng } from './png.mjs';

const BASE = (process.env.HGPT_URL || '').replace(/\/+$/, '');
const SHOTS = path.resolve(process.env.SCREENSHOT_DIR || 'target/browser');
const BROWSER = process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = Number(process.env.UI_TIMEOUT_MS) || 30000;
const REQUEST = 'Describe /a.jpg, find the objects in it, read the caption aloud, then transcribe that speech.';
const ANSWER_START = 'Here is what the models found';

// A hard stop, so that nothing (a stuck browser included) can hang CI.
const watchdog = setTimeout(() => {
  console.error('FAIL: the browser test did not finish within 5 minutes');
  process.exit(1);
}, 5 * 60 * 1000);
watchdog.unref();

let current = 'start';
async function step(name, fn) {
  current = name;
  const result = await fn();
  console.log(`ok - ${name}`);
  return result;
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Waits until every graph node is done (at least `min` of them); fails early on a failed or skipped task. */
async function waitForAllDone(page, min) {
  const handle = await page.waitForFunction((n) => {
    const nodes = [...document.querySelectorAll('#graph svg .node[data-task-id][data-state]')];
    const bad = nodes.find((x) => ['failed', 'skipped'].includes(x.getAttribute('data-state')));
    if (bad) return `task #${bad.getAttribute('data-task-id')} is ${bad.getAttribute('data-state')}`;
    if (nodes.length >= n && nodes.every((x) => x.getAttribute('data-state') === 'done')) return 'done';
    return false;
  }, min);
  const outcome = await handle.jsonValue();
  check(outcome === 'done', `the graph did not complete: ${outcome}`);
  return page.locator('#graph svg .node').count();
}

async function waitForAnswer(page) {
  await page.waitForFunction((start) => {
    const answer = document.querySelector('.answer');
    return answer && answer.textContent.startsWith(start);
  }, ANSWER_START);
}

async function main() {
  check(BASE, 'HGPT_URL is not set (the base URL of a running `hgpt serve`)');
  mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({ executablePath: BROWSER, headless: true, args: ['--no-sandbox'], timeout: TIMEOUT });
  const problems = [];
  let page;
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    if (process.env.HGPT_API_TOKEN) {
      await context.addInitScript((token) => localStorage.setItem('hgpt.token', token), process.env.HGPT_API_TOKEN);
    }
    page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));

    await step('open the page', async () => {
      const res = await page.goto(`${BASE}/`, { waitUntil: 'load' });
      check(res && res.ok(), `GET / answered ${res && res.status()}`);
      await page.locator('#prompt').waitFor();
      await page.locator('#send').waitFor();
    });

    const runId = await step('send a multi-step request', async () => {
      await page.fill('#prompt', REQUEST);
      const created = page.waitForResponse((r) => new URL(r.url()).pathname === '/v1/runs' && r.request().method() === 'POST');
      await page.click('#send');
      const res = await created;
      check(res.status() === 202, `POST /v1/runs answered ${res.status()}`);
      const body = await res.json();
      check(typeof body.id === 'string' && body.id, 'POST /v1/runs returned no id');
      return body.id;
    });

    await step('the graph shows at least 3 nodes, all reach "done"', async () => {
      await page.waitForFunction(() => document.querySelectorAll('#graph svg .node[data-task-id]').length >= 3);
      const count = await waitForAllDone(page, 3);
      console.log(`  ${count} nodes done`);
    });

    await step('the streamed answer appears', async () => {
      await waitForAnswer(page);
      await page.waitForFunction(() => document.querySelector('#run-state')?.textContent === 'succeeded');
    });

    await step('the object-detection output image loads', async () => {
      await page.click('#graph .node[data-task="object-detection"]');
      await page.waitForFunction(() => [...document.querySelectorAll('.task-output img')]
        .some((img) => img.complete && img.naturalWidth > 0));
    });

    await step('the run is listed in #runs', async () => {
      const item = page.locator(`#runs li[data-run-id="${runId}"]`);
      await item.waitFor();
      await page.waitForFunction((id) => document.querySelector(`#runs li[data-run-id="${id}"]`)?.getAttribute('data-state') === 'succeeded', runId);
    });

    await step('desktop screenshot', async () => {
      await page.screenshot({ path: path.join(SHOTS, 'desktop.png') });
    });

    await step('a past run replays from the list', async () => {
      await page.click('#new-chat');
      await page.waitForFunction(() => !document.querySelector('#graph svg') && !document.querySelector('.answer'));
      await page.click(`#runs li[data-run-id="${runId}"] button`);
      await waitForAllDone(page, 3);
      await waitForAnswer(page);
      await page.click('#graph .node[data-task="object-detection"]');
      await page.waitForFunction(() => [...document.querySelectorAll('.task-output img')]
        .some((img) => img.complete && img.naturalWidth > 0));
    });

    await step('phone width: no horizontal overflow', async () => {
      await page.setViewportSize({ width: 390, height: 844 });
      await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
      const width = await page.evaluate(() => document.scrollingElement.scrollWidth);
      check(width <= 391, `the page is ${width}px wide at a 390px viewport (horizontal scroll)`);
      await page.locator('#graph svg').waitFor();
      await page.locator('.answer').waitFor();
      await page.screenshot({ path: path.join(SHOTS, 'phone.png') });
    });

    await step('an attached PNG uploads and shows a chip', async () => {
      const uploaded = page.waitForResponse((r) => new URL(r.url()).pathname === '/v1/files' && r.request().method() === 'POST');
      await page.setInputFiles('#attach', { name: 'dot.png', mimeType: 'image/png', buffer: makePng(32, 32) });
      const res = await uploaded;
      check(res.status() === 201, `POST /v1/files answered ${res.status()}: ${await res.text()}`);
      const body = await res.json();
      check(typeof body.name === 'string' && body.name.startsWith('/'), `POST /v1/files returned no usable name: ${JSON.stringify(body)}`);
      const chip = page.locator('#chips .chip', { hasText: 'dot.png' });
      await chip.waitFor();
      await page.waitForFunction(() => document.querySelector('#chips .chip')?.getAttribute('data-status') !== 'uploading');
      check((await chip.getAttribute('data-status')) === 'ready', 'the chip did not reach the "ready" state');
      check((await chip.textContent()).includes(body.name), 'the chip does not show the uploaded name');
      await page.screenshot({ path: path.join(SHOTS, 'upload.png') });
    });

    check(problems.length === 0, problems.join('\n'));
    console.log(`browser test passed; screenshots in ${SHOTS}`);
  } catch (err) {
    if (page) await page.screenshot({ path: path.join(SHOTS, 'failure.png') }).catch(() => {});
    throw err;
  } finally {
    await browser.close().catch(() => {});
  }
}

main().then(() => process.exit(0), (err) => {
  const [first, ...rest] = String(err && err.message ? err.message : err).split('\n');
  console.error(`FAIL at step "${current}": ${first}`);
  if (rest.length) console.error(rest.join('\n'));
  process.exit(1);
});
