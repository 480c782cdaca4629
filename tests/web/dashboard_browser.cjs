// Drives the farm dashboard in headless Chromium (Debian's chromium) with
// playwright-core: token prompt, a job seen queued then succeeded live (no
// reload), its page (parameters, seed, metadata, download), a submit from the
// form with a hostile prompt, screenshots into OUT_DIR.
// Usage: node dashboard_browser.cjs NPM_DIR BASE_URL OUT_DIR TOKEN WORKER
// Prints one JSON line with what it saw; dashboard_test.cc checks it.
'use strict';
const path = require('path');
const fs = require('fs');
const crypto = require('crypto');
const [npmDir, base, outDir, token, worker] = process.argv.slice(2);
const { chromium } = require(path.join(npmDir, 'node_modules', 'playwright-core'));
const SLOW = { timeout: 120000 };

async function rest(method, p, body) {
  const res = await fetch(base + p, {
    method,
    headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
  return JSON.parse(text);
}

async function main() {
  const report = { seen: [], pageErrors: [], external: [] };
  const browser = await chromium.launch({
    executablePath: process.env.ZFARM_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox'],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
    const page = await context.newPage();
    const host = new URL(base).host;
    page.on('pageerror', (e) => report.pageErrors.push(String(e)));
    page.on('request', (r) => {
      const u = new URL(r.url());
      if (u.protocol !== 'blob:' && u.protocol !== 'data:' && u.host !== host) report.external.push(r.url());
    });
    const shot = async (name) => {
      const file = path.join(outDir, name);
      await page.screenshot({ path: file, fullPage: true });
      (report.screenshots = report.screenshots || []).push(file);
    };

    // The farm has tokens: the page asks for one, keeps it in the tab.
    await page.goto(base + '/');
    await page.waitForSelector('#token-box:not([hidden])');
    report.tokenPrompt = true;
    await shot('0-token.png');
    await page.fill('#token-input', token);
    await page.click('#token-form button');
    await page.waitForSelector('#live[data-live="live"]');
    report.sessionToken = await page.evaluate(() => sessionStorage.getItem('zfarm-token')) === token;
    await page.evaluate(() => { window.__sameDocument = 'yes'; });

    // A job held queued (worker drained), then released: the card changes live.
    await rest('POST', `/v1/workers/${encodeURIComponent(worker)}:drain`);
    const sub = await rest('POST', '/v1/jobs', {
      request_id: 'dashboard-test-1',
      spec: { prompt: 'a lighthouse at dusk', width_px: 256, height_px: 256, steps: 2, seed: '5' },
    });
    const id = sub.job.job_id;
    report.jobId = id;
    await page.waitForSelector(`a.job[data-job="${id}"][data-state="queued"]`, SLOW);
    report.seen.push('queued');
    // The queue count follows in the same or the next summary.
    await page.waitForFunction(() => document.getElementById('q-queued').textContent === '1', null, SLOW);
    report.queuedCount = await page.textContent('#q-queued');
    await shot('1-queued.png');
    await rest('POST', `/v1/workers/${encodeURIComponent(worker)}:undrain`);
    await page.waitForSelector(`a.job[data-job="${id}"][data-state="succeeded"] .thumb img`, SLOW);
    report.seen.push('succeeded');
    report.sameDocument = await page.evaluate(() => window.__sameDocument);
    report.workerRow = await page.textContent(`tr[data-worker="${worker}"]`);
    await shot('2-succeeded.png');

    // The job's page: parameters, seed, metadata, download.
    await page.click(`a.job[data-job="${id}"]`);
    await page.waitForSelector('#job-view:not([hidden]) #job-download:not([disabled])', SLOW);
    await page.waitForFunction(() => document.getElementById('job-metadata').textContent.length > 0);
    report.params = await page.$$eval('#job-params td[data-param]',
      (tds) => Object.fromEntries(tds.map((td) => [td.dataset.param, td.textContent])));
    report.metadata = await page.textContent('#job-metadata');
    report.imageWidth = await page.$eval('#job-image', (img) => img.naturalWidth);
    await shot('3-job.png');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#job-download')]);
    const saved = path.join(outDir, 'download-' + download.suggestedFilename());
    await download.saveAs(saved);
    report.download = { file: saved, name: download.suggestedFilename() };

    // The thumbnail again, twice, straight from the route (cached: made once).
    report.thumbnails = [];
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${base}/v1/jobs/${id}/thumbnail`, { headers: { Authorization: 'Bearer ' + token } });
      const bytes = Buffer.from(await res.arrayBuffer());
      report.thumbnails.push({ status: res.status, sha256: crypto.createHash('sha256').update(bytes).digest('hex'),
                               width: bytes.readUInt32BE(16), height: bytes.readUInt32BE(20) });
    }

    // Submit from the form, with markup in the prompt: it must stay text.
    await page.click('a.brand');
    await page.waitForSelector('#farm-view:not([hidden])');
    const evil = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1"> a fox';
    await page.fill('#f-prompt', evil);
    await page.fill('#f-width', '256');
    await page.fill('#f-height', '256');
    await page.fill('#f-steps', '1');
    await page.fill('#f-seed', '9');
    await page.click('#submit-form button');
    await page.waitForSelector('#submitted-job', SLOW);
    const formId = await page.textContent('#submitted-job');
    report.formJobId = formId;
    await page.waitForSelector(`a.job[data-job="${formId}"][data-state="succeeded"] .thumb img`, SLOW);
    report.evilText = await page.textContent(`a.job[data-job="${formId}"] .prompt`);
    report.injectedImages = await page.$$eval('img[src="x"]', (imgs) => imgs.length);
    report.injectedScripts = await page.$$eval('#jobs script', (s) => s.length);
    await shot('4-submitted.png');
    await page.click(`a.job[data-job="${formId}"]`);
    await page.waitForSelector('#job-view:not([hidden]) td[data-param="prompt"]', SLOW);
    report.evilParam = await page.textContent('td[data-param="prompt"]');
    report.pwned = await page.evaluate(() => (window.__pwned === undefined ? null : window.__pwned));
    await shot('5-submitted-job.png');
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(report));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
