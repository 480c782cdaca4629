// Drives zfarm's OpenAI images API with the official `openai` npm client.
// Usage: node openai_client.cjs NPM_DIR BASE_URL OUT_DIR
//   NPM_DIR: where tests/web/fetch-web-deps.sh installed the packages
//   BASE_URL: http://127.0.0.1:PORT/v1
// Writes OUT_DIR/b64-<i>.png and prints one JSON line with what it saw; the
// gtest (openai_test.cc) checks it. Exits 1 when a call fails unexpectedly.
'use strict';
const path = require('path');
const fs = require('fs');
const [npmDir, baseURL, outDir] = process.argv.slice(2);
const OpenAI = require(path.join(npmDir, 'node_modules', 'openai')).default;

async function main() {
  const client = new OpenAI({ baseURL, apiKey: 'not-checked-without-tokens', maxRetries: 0 });
  const report = {};

  const models = await client.models.list();
  report.models = models.data.map((m) => m.id);

  // Two images in one batch, b64_json, with zfarm's extensions.
  const gen = await client.images.generate({
    model: report.models[0],
    prompt: 'a lighthouse at dusk',
    n: 2,
    size: '256x256',
    response_format: 'b64_json',
    output_format: 'png',
    seed: 7,
    steps: 2,
  });
  report.created = gen.created;
  report.size = gen.size;
  report.output_format = gen.output_format;
  report.b64 = gen.data.map((d, i) => {
    const file = path.join(outDir, `b64-${i}.png`);
    fs.writeFileSync(file, Buffer.from(d.b64_json, 'base64'));
    return { file, seed: d.seed, job_id: d.job_id };
  });

  // A URL answer, fetched like a user would.
  const byUrl = await client.images.generate({
    prompt: 'a lighthouse at dusk',
    size: '256x256',
    response_format: 'url',
    seed: 11,
    steps: 1,
  });
  const res = await fetch(byUrl.data[0].url);
  const bytes = Buffer.from(await res.arrayBuffer());
  report.url = { url: byUrl.data[0].url, status: res.status, type: res.headers.get('content-type'),
                 signature: bytes.subarray(0, 8).toString('hex'), job_id: byUrl.data[0].job_id };

  // JPEG with a quality (output_compression).
  const jpeg = await client.images.generate({
    prompt: 'a lighthouse at dusk', size: '256x256', output_format: 'jpeg',
    output_compression: 80, seed: 13, steps: 1,
  });
  report.jpeg = { output_format: jpeg.output_format, job_id: jpeg.data[0].job_id,
                  signature: Buffer.from(jpeg.data[0].b64_json, 'base64').subarray(0, 3).toString('hex') };

  // Idempotency-Key: the same key and body twice is one job.
  const opts = { headers: { 'Idempotency-Key': 'openai-test-key-1' } };
  const body = { prompt: 'a red fox', size: '256x256', seed: 3, steps: 1 };
  const first = await client.images.generate(body, opts);
  const again = await client.images.generate(body, opts);
  report.idempotent = [first.data[0].job_id, again.data[0].job_id];

  // Errors, as the SDK surfaces them.
  report.errors = {};
  const bad = {
    n_over_10: { prompt: 'x', n: 11 },
    bad_size: { prompt: 'x', size: 'huge' },
    size_limit: { prompt: 'x', size: '100x256' },
    bad_format: { prompt: 'x', output_format: 'gif' },
    compression: { prompt: 'x', output_format: 'jpeg', output_compression: 101 },
    unknown_field: { prompt: 'x', colour: 'blue' },
    unknown_model: { prompt: 'x', model: 'dall-e-3' },
  };
  for (const [name, params] of Object.entries(bad)) {
    try {
      await client.images.generate(params);
      report.errors[name] = { status: 200 };
    } catch (e) {
      report.errors[name] = { status: e.status, param: e.param, code: e.code, type: e.type,
                              message: e.message, isBadRequest: e instanceof OpenAI.BadRequestError };
    }
  }
  console.log(JSON.stringify(report));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
