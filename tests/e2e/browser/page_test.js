// page_test.js - the web page at / of performerd in headless Chromium (playwright-core, Debian's
// /usr/bin/chromium): load it from a real daemon, enter a sequence, check that the residues, the
// predictions (unmasked, then after clicking residues to mask them), the L x 20 heatmap with the
// wild type marked, and the mutation scores render and agree with the API; then drive a second
// daemon on another origin that needs an API key and allows the page's origin by CORS. Saves
// screenshots and prints their paths. Run by tests/e2e/test_page.sh.
"use strict";
const { chromium } = require("playwright-core");
const { spawn, execFileSync } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");
const http = require("http");

const ROOT = path.resolve(__dirname, "..", "..", "..");
const BIN = path.resolve(ROOT, process.env.BIN || "bin");
const OUT = path.resolve(process.env.PAGE_TEST_OUT || path.join(ROOT, "tests", "e2e", "out"));
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SEQ = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ";
const KEY = "page-test-key";

let checks = 0, failures = 0;
function check(cond, what) {
  checks++;
  if (!cond) { failures++; console.log("FAIL: " + what); }
  return cond;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "performerd-page-"));
const daemons = [];
function cleanup() {
  for (const d of daemons) { try { d.kill("SIGKILL"); } catch (e) { /* gone */ } }
  if (!process.env.KEEP_TMP) fs.rmSync(tmp, { recursive: true, force: true });
}
process.on("exit", cleanup);
for (const s of ["SIGINT", "SIGTERM"]) process.on(s, () => process.exit(1));

// Starts bin/performerd on a free port; resolves to {port, proc}.
function startDaemon(name, extra) {
  return new Promise((resolve, reject) => {
    const args = ["--bind", "127.0.0.1", "--port", "0", "--weights", path.join(tmp, "m.safetensors"),
      "--db", path.join(tmp, name + ".sqlite"), "--threads", "1"].concat(extra || []);
    const p = spawn(path.join(BIN, "performerd"), args, { stdio: ["ignore", "ignore", "pipe"] });
    daemons.push(p);
    let buf = "";
    const timer = setTimeout(() => reject(new Error(name + " did not start: " + buf)), 15000);
    p.stderr.on("data", (d) => {
      buf += d.toString();
      for (const line of buf.split("\n")) {
        try {
          const j = JSON.parse(line);
          if (j.msg === "listening") { clearTimeout(timer); resolve({ port: Number(j.port), proc: p }); }
        } catch (e) { /* partial line */ }
      }
    });
    p.on("exit", (code) => reject(new Error(name + " exited with " + code + ": " + buf)));
  });
}

// POSTs JSON to a daemon; resolves to the parsed body.
function post(port, route, body, headers) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request({ host: "127.0.0.1", port, path: route, method: "POST",
      headers: Object.assign({ "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) }, headers || {}) },
    (res) => {
      let s = "";
      res.on("data", (c) => { s += c; });
      res.on("end", () => { try { resolve(JSON.parse(s)); } catch (e) { reject(e); } });
    });
    req.on("error", reject);
    req.end(data);
  });
}

// Polls fn in the page until it returns a truthy value (page.waitForFunction evaluates strings,
// which the page's CSP rightly forbids; page.evaluate does not need eval).
async function waitFor(page, fn, arg, what) {
  const t0 = Date.now();
  for (;;) {
    if (await page.evaluate(fn, arg)) return;
    if (Date.now() - t0 > 20000) throw new Error("timed out waiting for " + (what || fn.toString()));
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  execFileSync(path.join(BIN, "performer"), ["init", "--out", path.join(tmp, "m.safetensors"), "--seed", "3",
    "--layers", "2", "--d-model", "32", "--heads", "4", "--d-ff", "64", "--features", "16"], { stdio: "ignore" });
  const a = await startDaemon("a");
  const originA = "http://127.0.0.1:" + a.port;
  const b = await startDaemon("b", ["--api-key", KEY, "--cors-origin", originA]);
  const originB = "http://127.0.0.1:" + b.port;

  const userDir = fs.mkdtempSync(path.join(tmp, "chromium-profile-"));
  const ctx = await chromium.launchPersistentContext(userDir, {
    executablePath: CHROMIUM, headless: true, viewport: { width: 1280, height: 1100 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const problems = [];
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    page.on("console", (m) => { if (m.type() === "error") problems.push("console error: " + m.text()); });
    page.setDefaultTimeout(20000);

    // ---- same origin, no key ------------------------------------------------------------------------
    const resp = await page.goto(originA + "/");
    check(resp.status() === 200, "GET / is 200: " + resp.status());
    const csp = resp.headers()["content-security-policy"] || "";
    check(csp.includes("default-src 'none'") && csp.includes("script-src 'sha256-"), "page has a strict CSP: " + csp);
    await waitFor(page, () => document.getElementById("model-info").dataset.connected === "1");
    check((await page.textContent("#model-info")).includes("UNTRAINED"), "model info says untrained");
    check((await page.textContent("#model-info")).includes("fp32"), "model info names the precision");
    await page.fill("#sequence", SEQ.toLowerCase().slice(0, 10) + "\n" + SEQ.slice(10));
    await page.click("#analyze");
    await waitFor(page, () => document.getElementById("heatmap").dataset.rendered === "1");
    await waitFor(page, () => Number(document.getElementById("predictions").dataset.rows || 0) > 0);
    check(Number(await page.getAttribute("#heatmap", "data-length")) === SEQ.length, "heatmap has L columns");
    check(await page.locator("#residues .res").count() === SEQ.length, "one residue button per position");
    check(Number(await page.getAttribute("#predictions", "data-rows")) === SEQ.length,
      "unmasked predictions for every position");
    // the heatmap is drawn from /logits: colours vary, and the wild-type cell of position 1 (M) is outlined
    const px = await page.evaluate(() => {
      const cv = document.getElementById("heatmap"), g = cv.getContext("2d");
      const d = g.getImageData(0, 0, cv.width, cv.height).data, seen = new Set();
      for (let i = 0; i < d.length; i += 4 * 7) seen.add(d[i] + "," + d[i + 1] + "," + d[i + 2]);
      return { colours: seen.size, width: cv.width, height: cv.height };
    });
    check(px.colours > 20 && px.width > SEQ.length * 2 && px.height >= 20 * 12, "heatmap drawn: " + JSON.stringify(px));
    const ref = await post(a.port, "/logits", { sequence: SEQ });
    const lp = ref.results[0].log_probs;
    let lo = Infinity, hi = -Infinity;
    for (const row of lp) for (const v of row) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const legend = [await page.textContent("#legend-min"), await page.textContent("#legend-max")];
    check(legend[0] === lo.toFixed(2) && legend[1] === hi.toFixed(2), "legend is the range of /logits: " + legend);
    await page.locator("#heatmap").scrollIntoViewIfNeeded();
    const box = await page.locator("#heatmap").boundingBox();
    const cw = Math.max(2, Math.min(16, Math.floor(1100 / SEQ.length)));   /* the page's cell width */
    // hover the K of position 2 (row of K = 8): the tooltip names it and gives /logits' value
    await page.mouse.move(box.x + 18 + 1 * cw + cw / 2, box.y + 16 + 8 * 12 + 6);
    const tip = await page.textContent("#heat-tip");
    check(tip.includes("position 2") && tip.includes("K -> K") && tip.includes("(wild type)") &&
      tip.includes(lp[1][8].toFixed(3)), "tooltip shows the wild-type cell with its log p: " + tip);

    // mask residues 4 and 9 by clicking them: predictions for those positions only, as the API gives
    await page.click('#residues .res[data-position="4"]');
    await page.click('#residues .res[data-position="9"]');
    await waitFor(page, () => document.getElementById("predictions").dataset.rows === "2");
    const rows = await page.$$eval("#predictions tbody tr", (trs) => trs.map((t) => ({
      pos: t.dataset.position, cands: Array.from(t.querySelectorAll(".cand")).map((c) => c.textContent) })));
    check(rows.length === 2 && rows[0].pos === "4" && rows[1].pos === "9", "rows for masked positions 4 and 9");
    const api = await post(a.port, "/predict", { sequence: SEQ, mask_positions: [4, 9], top_k: 5 });
    const top = api.results[0].predictions[0].top_k;
    check(rows[0].cands.length === 5 && rows[0].cands[0].startsWith(top[0].token + " " + top[0].prob.toFixed(3)),
      "top-1 of position 4 matches /predict: " + rows[0].cands[0] + " vs " + top[0].token);
    check(await page.locator('#residues .res.masked').count() === 2, "masked residues highlighted");

    // a heatmap click proposes a mutation; scoring agrees with POST /score
    await page.locator("#heatmap").scrollIntoViewIfNeeded();
    const box2 = await page.locator("#heatmap").boundingBox();
    await page.mouse.click(box2.x + 18 + 3 * cw + cw / 2, box2.y + 16 + 5 * 12 + 6);   // position 4, row G
    check((await page.inputValue("#mutations")) === "A4G", "heatmap click fills A4G");
    await page.fill("#mutations", "A4G, K2R:T3N");
    await page.click("#score");
    await waitFor(page, () => document.getElementById("scores").dataset.rows === "2");
    const shown = await page.$$eval("#scores tbody tr", (trs) => trs.map((t) => [t.dataset.mutant, t.children[1].textContent]));
    const sc = await post(a.port, "/score", { sequence: SEQ, mutations: ["A4G", "K2R:T3N"] });
    check(shown.length === 2 && shown[0][0] === "A4G" && shown[0][1] === sc.scores[0].score.toFixed(4) &&
      shown[1][1] === sc.scores[1].score.toFixed(4), "scores match /score: " + JSON.stringify(shown));
    await page.evaluate(() => { document.getElementById("status").className = ""; });
    await page.fill("#mutations", "G4A");
    await page.click("#score");
    await waitFor(page, () => document.getElementById("status").className === "error");
    check((await page.textContent("#status")).includes("position 4"), "wild-type mismatch is shown with its position");
    const shot1 = path.join(OUT, "page.png");
    await page.screenshot({ path: shot1, fullPage: true });
    console.log("screenshot: " + shot1);

    // ---- another origin: API key + CORS ----------------------------------------------------------------
    const clearStatus = () => page.evaluate(() => { const s = document.getElementById("status"); s.textContent = ""; s.className = ""; });
    await clearStatus();
    await page.fill("#server", originB);
    await page.fill("#api-key", "");
    await page.click("#connect");
    await waitFor(page, () => document.getElementById("status").className === "error");
    check((await page.textContent("#status")).includes("API key"), "missing key is reported");
    await page.fill("#api-key", KEY);
    await page.fill("#sequence", SEQ.slice(0, 20));
    await page.click("#connect");
    await waitFor(page, (n) => document.getElementById("heatmap").dataset.length === String(n), 20);
    await waitFor(page, () => Number(document.getElementById("predictions").dataset.rows || 0) === 20);
    check((await page.textContent("#status")).startsWith("20 residues"), "analysis through CORS with the key: " +
      await page.textContent("#status"));
    await page.fill("#mutations", "A4G");
    await page.click("#score");
    await waitFor(page, () => document.getElementById("scores").dataset.rows === "1");
    const sc2 = await post(b.port, "/score", { sequence: SEQ.slice(0, 20), mutations: ["A4G"] },
      { Authorization: "Bearer " + KEY });
    const shown2 = await page.$$eval("#scores tbody tr", (trs) => trs.map((t) => t.children[1].textContent));
    check(shown2[0] === sc2.scores[0].score.toFixed(4), "cross-origin score matches: " + shown2[0]);
    const shot2 = path.join(OUT, "page-cors.png");
    await page.screenshot({ path: shot2, fullPage: true });
    console.log("screenshot: " + shot2);
    // the deliberate 401 and 422 answers are logged by Chromium as failed loads; anything else is a problem
    const relevant = problems.filter((p) => !p.includes("Failed to load resource"));
    check(relevant.length === 0, "no page errors or CSP violations: " + relevant.join(" | "));
  } finally {
    await ctx.close();
  }
  console.log(checks + " checks, " + failures + " failed");
  process.exit(failures ? 1 : 0);
}

main().catch((e) => { console.log("FAIL: " + (e.stack || e)); process.exit(1); });
