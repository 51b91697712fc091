// Drive the OHIF Viewer in Debian's Chromium (headless, through playwright-core) the way a person does:
// open the study list, find the study, open it in the Basic Viewer, and wait until the viewport shows the
// image. Run by tests/test_ohif.py:
//
//   node bench/ohif.mjs VIEWER_URL SERVICE_URL STUDY_DESCRIPTION ARTIFACTS_DIR
//
// The benchmark's viewer scenario (bench/viewer.py) adds a study and a number of frames:
//
//   node bench/ohif.mjs VIEWER_URL SERVICE_URL STUDY_DESCRIPTION ARTIFACTS_DIR STUDY_UID FRAMES
//
// and the driver opens the viewer on that study directly, waits for the image and then until FRAMES frame
// responses from the server have been read to their end, and reports both moments in `timings` (ms since it
// asked for the viewer page). Chromium then runs without web security, since Orthanc sends no CORS headers;
// our server is treated the same.
//
// It writes viewport.png (the viewport canvas), page.png (the whole page) and browser.log (console messages,
// failed requests, HTTP errors) into ARTIFACTS_DIR, and prints one JSON line: {ok, step, error, stats,
// frames (WADO-RS frame responses from the service), serviceErrors (its 4xx/5xx answers), timings}.
// Every wait is on the state of the page (an element, the pixels of the canvas, responses), never a fixed sleep.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [viewerUrl, serviceUrl, studyDescription, artifacts, studyUid, expectedFrames] = process.argv.slice(2);
const CHROMIUM = '/usr/bin/chromium';
// Flags that keep Chromium from reaching out to Google's hosts on a machine with a closed network.
const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const STEP_TIMEOUT_MS = 45_000;
const IMAGE_TIMEOUT_MS = 60_000;
const FRAMES_TIMEOUT_MS = 300_000;
// The viewport shows the image when enough of it is bright and it is not one flat colour.
const BRIGHT_LUMINANCE = 40;
const MIN_BRIGHT_FRACTION = 0.2;
const MIN_STDDEV = 20;

/** Luminance statistics of a PNG (base64), computed in the page with the browser's own decoder. */
async function pixelStats(page, pngBase64) {
  return page.evaluate(
    async ({ data, threshold }) => {
      const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
      const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
      const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
      const context = canvas.getContext('2d');
      context.drawImage(bitmap, 0, 0);
      const pixels = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
      let bright = 0;
      let sum = 0;
      let sumOfSquares = 0;
      const count = pixels.length / 4;
      for (let i = 0; i < pixels.length; i += 4) {
        const luminance = 0.299 * pixels[i] + 0.587 * pixels[i + 1] + 0.114 * pixels[i + 2];
        if (luminance > threshold) bright += 1;
        sum += luminance;
        sumOfSquares += luminance * luminance;
      }
      const mean = sum / count;
      return {
        width: bitmap.width,
        height: bitmap.height,
        brightFraction: bright / count,
        mean,
        stddev: Math.sqrt(Math.max(0, sumOfSquares / count - mean * mean)),
      };
    },
    { data: pngBase64, threshold: BRIGHT_LUMINANCE },
  );
}

/** Screenshots of the viewport canvas until it shows an image; the last screenshot and its statistics. */
async function waitForImage(page, canvas) {
  const deadline = Date.now() + IMAGE_TIMEOUT_MS;
  for (;;) {
    const png = await canvas.screenshot({ path: join(artifacts, 'viewport.png') });
    const stats = await pixelStats(page, png.toString('base64'));
    if (stats.brightFraction >= MIN_BRIGHT_FRACTION && stats.stddev >= MIN_STDDEV) return stats;
    if (Date.now() > deadline) {
      throw new Error(`the viewport stayed blank for ${IMAGE_TIMEOUT_MS / 1000} s: ${JSON.stringify(stats)}`);
    }
    // Wait for the next frames the page paints, not for a fixed time.
    await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
  }
}

/** The test's path, a person's: study list, study, Basic Viewer, until the viewport shows the image. */
async function openFromStudyList(page, result) {
  result.step = 'open the study list';
  await page.goto(`${viewerUrl}/`, { waitUntil: 'domcontentloaded', timeout: STEP_TIMEOUT_MS });
  result.step = 'find the study in the study list';
  const row = page.locator('tr', { hasText: studyDescription });
  await row.waitFor({ state: 'visible', timeout: STEP_TIMEOUT_MS });
  result.step = 'select the study';
  await row.click({ timeout: STEP_TIMEOUT_MS });
  result.step = 'open the study in the Basic Viewer';
  await page.getByRole('button', { name: 'Basic Viewer' }).first().click({ timeout: STEP_TIMEOUT_MS });
  result.step = 'wait for the viewport canvas';
  const canvas = page.locator('canvas.cornerstone-canvas').first();
  await canvas.waitFor({ state: 'visible', timeout: STEP_TIMEOUT_MS });
  result.step = 'wait for the image in the viewport';
  result.stats = await waitForImage(page, canvas);
  result.ok = true;
  result.step = 'done';
}

/** The benchmark's path: the viewer on one study, timed to the first image and to the last frame read. */
async function openStudy(page, uid, result, framesDone) {
  result.step = 'open the viewer on the study';
  const started = Date.now();
  await page.goto(`${viewerUrl}/viewer?StudyInstanceUIDs=${uid}`, { waitUntil: 'domcontentloaded', timeout: STEP_TIMEOUT_MS });
  result.step = 'wait for the viewport canvas';
  const canvas = page.locator('canvas.cornerstone-canvas').first();
  await canvas.waitFor({ state: 'visible', timeout: STEP_TIMEOUT_MS });
  result.step = 'wait for the image in the viewport';
  result.stats = await waitForImage(page, canvas);
  result.timings = { firstImage: Date.now() - started, allFrames: null };
  result.step = `wait until ${expectedFrames} frames are read`;
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`only ${framesRead} frames read in ${FRAMES_TIMEOUT_MS / 1000} s`)), FRAMES_TIMEOUT_MS);
  });
  await Promise.race([framesDone, timeout]).finally(() => clearTimeout(timer));
  result.timings.allFrames = Date.now() - started;
  result.ok = true;
  result.step = 'done';
}

async function main() {
  const log = [];
  const result = { ok: false, step: 'launch Chromium', error: null, stats: null, frames: 0, serviceErrors: [], timings: null };
  const isFrame = (url) => url.startsWith(serviceUrl) && /\/frames\/\d+$/.test(new URL(url).pathname);
  let framesRead = 0;
  let allFramesRead = () => {};
  const profile = mkdtempSync(join(tmpdir(), 'ohif-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: studyUid ? [...FLAGS, '--disable-web-security'] : FLAGS,
      viewport: { width: 1400, height: 900 },
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (message) => log.push(`console.${message.type()}: ${message.text()}`));
    page.on('pageerror', (error) => log.push(`page error: ${error.message}`));
    page.on('requestfailed', (request) => log.push(`request failed: ${request.url()} ${request.failure()?.errorText}`));
    page.on('response', (response) => {
      const fromService = response.url().startsWith(serviceUrl);
      if (response.status() >= 400) {
        log.push(`HTTP ${response.status()}: ${response.url()}`);
        if (fromService) result.serviceErrors.push(`${response.status()} ${response.url()}`);
      } else if (isFrame(response.url())) {
        result.frames += 1;
      }
    });
    page.on('requestfinished', async (request) => {
      if (!isFrame(request.url()) || (await request.response())?.status() !== 200) return;
      framesRead += 1;
      if (framesRead >= Number(expectedFrames)) allFramesRead();
    });
    // A returning user: the first-visit tour of the viewer would cover the image.
    await page.addInitScript(() => localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])));
    try {
      if (studyUid) {
        await openStudy(page, studyUid, result, new Promise((resolve) => { allFramesRead = resolve; }));
      } else {
        await openFromStudyList(page, result);
      }
    } catch (error) {
      result.error = String(error?.message ?? error).split('\n')[0];
    } finally {
      await page.screenshot({ path: join(artifacts, 'page.png') }).catch(() => {});
    }
  } catch (error) {
    result.error = String(error?.message ?? error).split('\n')[0];
  } finally {
    writeFileSync(join(artifacts, 'browser.log'), `${log.join('\n')}\n`);
    if (context) await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

await main();
