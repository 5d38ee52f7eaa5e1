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

    // ---- input a scientist pastes: FASTA records, hostile names, digits, errors, races, keyboard, reload --
    const idle = () => waitFor(page, () => !document.getElementById("analyze").disabled &&
      document.getElementById("pred-section").getAttribute("aria-busy") === "false", null, "the page to be idle");
    const status = () => page.textContent("#status");
    const XSS = "<img src=x onerror=alert(1)>";
    const R1 = SEQ.slice(0, 25), R2 = SEQ.slice(5, 33);
    const fasta = ">sp|P00001|ONE " + XSS + "\n        1 " + R1.slice(0, 10).toLowerCase() + " " + R1.slice(10) + "\n\n" +
      ">two\r\n" + R2.slice(0, 14) + "\r\n" + R2.slice(14) + "*\r\n";
    await page.fill("#sequence", fasta);
    await page.click("#analyze");
    await idle();
    check(await page.getAttribute("#heatmap", "data-length") === String(R1.length),
      "FASTA: the first record is analyzed without header, digits and whitespace: " + await status());
    check((await status()).includes("ONE " + XSS) && (await status()).includes("record 1 of 2") && (await status()).includes("1 digit(s) ignored"),
      "FASTA: the status names the record literally: " + await status());
    check(await page.locator("img").count() === 0, "a header is never markup");
    check(await page.isVisible("#record") && await page.locator("#record option").count() === 2, "a record selector for two records");
    const p1 = await post(a.port, "/predict", { sequence: R1, top_k: 5 });
    const c1 = await page.textContent('#predictions tbody tr[data-position="1"] .cand');
    check(c1.startsWith(p1.results[0].predictions[0].top_k[0].token + " " + p1.results[0].predictions[0].top_k[0].prob.toFixed(3)),
      "FASTA record 1 predictions match /predict of the cleaned sequence: " + c1);
    await page.selectOption("#record", "1");
    await waitFor(page, (n) => document.getElementById("heatmap").dataset.length === String(n), R2.length, "record 2");
    await idle();
    check((await status()).startsWith(R2.length + " residues - two (record 2 of 2)") && (await status()).includes("'*' ignored"),
      "record 2 analyzed, final stop dropped: " + await status());
    await page.fill("#mutations", R2[2] + "3A");
    await page.press("#mutations", "Enter");
    await page.press("#mutations", "Enter");   // a second Enter while scoring is ignored
    await waitFor(page, () => document.getElementById("scores").dataset.rows === "1" &&
      document.getElementById("score-section").getAttribute("aria-busy") === "false");
    const sc3 = await post(a.port, "/score", { sequence: R2, mutations: [R2[2] + "3A"] });
    check(await page.textContent("#scores tbody td.num") === sc3.scores[0].score.toFixed(4), "score on the selected record matches /score");

    // a stale answer never overwrites a newer one: mask position 4 (its answer delayed), unmask it at once
    let delayed = 0;
    await page.route("**/predict", async (route) => {
      if ((route.request().postData() || "").includes("mask_positions")) { delayed++; await new Promise((r) => setTimeout(r, 1500)); }
      await route.continue();
    });
    await page.click('#residues .res[data-position="4"]');
    await waitFor(page, () => document.getElementById("pred-section").getAttribute("aria-busy") === "true", null, "predict busy");
    check((await status()).startsWith("predicting"), "a running prediction is shown: " + await status());
    await page.click('#residues .res[data-position="4"]');
    await new Promise((r) => setTimeout(r, 2000));
    await idle();
    check(delayed === 1 && await page.getAttribute("#predictions", "data-rows") === String(R2.length) &&
      (await page.textContent("#pred-mode")).includes("nothing masked"), "the late masked answer is dropped: " + await page.textContent("#pred-mode"));
    await page.unroute("**/predict");

    // editing the text box does not retarget the shown residues: a mask click predicts the analyzed sequence
    const sent = [];
    const onReq = (r) => { if (r.url().endsWith("/predict")) sent.push(JSON.parse(r.postData()).sequence); };
    page.on("request", onReq);
    await page.fill("#sequence", "MKTAYIAKQRQ");
    check((await page.textContent("#stale")).includes("Analyze"), "an edit since the analysis is flagged");
    await page.click('#residues .res[data-position="20"]');
    await waitFor(page, () => document.getElementById("predictions").dataset.rows === "1");
    page.off("request", onReq);
    check(sent.length === 1 && sent[0] === R2, "mask click predicts the analyzed sequence: " + sent);

    // errors: invalid letter (residue position, results cleared), empty input, 429 and a proxy's 503
    await page.fill("#sequence", ">bad\nMKT AY\nJAK");
    await page.click("#analyze");
    await waitFor(page, () => document.getElementById("status").className === "error");
    check((await status()).includes("'J' at position 6 of bad") && await page.getAttribute("#heatmap", "data-rendered") === "0",
      "invalid residue named by residue position, old results cleared: " + await status());
    await page.fill("#sequence", "  \n");
    await page.click("#analyze");
    check((await status()).includes("no sequence"), "empty input: " + await status());
    await page.fill("#sequence", SEQ);
    await page.click("#analyze");
    await idle();
    await page.route("**/predict", (route) => route.fulfill({ status: 429, headers: { "Retry-After": "2", "Content-Type": "application/json" },
      body: JSON.stringify({ error: "the inference queue is full; retry after a second", error_type: "queue_full" }) }));
    await page.click('#residues .res[data-position="3"]');
    await waitFor(page, () => document.getElementById("status").className === "error");
    await idle();
    check((await status()).includes("queue is full") && (await status()).includes("try again in 2 s"), "429 shown with Retry-After: " + await status());
    await page.unroute("**/predict");
    await page.route("**/logits", (route) => route.fulfill({ status: 503, headers: { "Content-Type": "text/html" }, body: "<h1>" + XSS + "</h1>" }));
    await page.click("#analyze");
    await waitFor(page, () => document.getElementById("status").className === "error");
    check((await status()).startsWith("HTTP 503") && !(await page.isDisabled("#analyze")) && await page.locator("img").count() === 0,
      "a non-JSON 503 is reported, nothing stuck: " + await status());
    await page.unroute("**/logits");

    // keyboard: one tab stop for all residues (arrows move), Enter masks; the heatmap takes arrows and Enter
    await page.click("#analyze");
    await idle();
    check(await page.locator('#residues .res[tabindex="0"]').count() === 1, "residues are one tab stop");
    await page.focus("#clear-masks");
    await page.keyboard.press("Tab");
    await page.keyboard.press("ArrowRight");
    await page.keyboard.press("Enter");
    await waitFor(page, () => document.getElementById("predictions").dataset.rows === "1");
    check(await page.getAttribute('#residues .res[data-position="2"]', "aria-pressed") === "true" &&
      await page.getAttribute("#predictions tbody tr", "data-position") === "2", "arrow + Enter masks position 2");
    await page.fill("#mutations", "");
    await page.focus("#heatmap");
    await page.keyboard.press("ArrowRight");
    await page.keyboard.press("ArrowRight");
    await page.keyboard.press("ArrowUp");
    await page.keyboard.press("Enter");
    const kbm = SEQ[2] + "3" + "ACDEFGHIKLMNPQRSTVWY"["ACDEFGHIKLMNPQRSTVWY".indexOf(SEQ[0]) - 1];
    check(await page.inputValue("#mutations") === kbm && (await page.textContent("#heat-tip")).includes("position 3"),
      "heatmap keys add " + kbm + ": " + await page.inputValue("#mutations"));

    // reload keeps the tab's input and masks and shows the analysis again
    await page.reload();
    await waitFor(page, () => document.getElementById("heatmap").dataset.rendered === "1", null, "re-analysis after reload");
    await idle();
    check(await page.inputValue("#sequence") === SEQ && await page.inputValue("#mutations") === kbm &&
      await page.getAttribute("#predictions tbody tr", "data-position") === "2", "reload restores the sequence, masks and mutations");

    // a long protein stays usable: capped rows in a scroll box, one short page; narrow screen does not overflow
    const LONG = Array.from({ length: 6000 }, (_, i) => "ACDEFGHIKLMNPQRSTVWY"[(i * 7 + (i >> 3)) % 20]).join("");
    await page.setViewportSize({ width: 375, height: 800 });
    await page.fill("#sequence", ">" + "LONGNAME".repeat(20) + "\n" + LONG);
    const t0 = Date.now();
    await page.click("#analyze");
    await waitFor(page, () => document.getElementById("heatmap").dataset.length === "6000", null, "6,000 residues");
    await idle();
    const lay = await page.evaluate(() => ({ h: document.documentElement.scrollHeight, sw: document.documentElement.scrollWidth,
      cw: document.documentElement.clientWidth, mode: document.getElementById("pred-mode").textContent }));
    check(lay.mode.includes("first 2000 of 6000") && lay.h < 4000 && lay.sw <= lay.cw,
      "6,000 residues in " + (Date.now() - t0) + " ms: rows capped, page " + lay.h + " px tall, no sideways scroll at 375 px: " + JSON.stringify(lay));
    await page.setViewportSize({ width: 1280, height: 1100 });

    // ---- another origin: API key + CORS ----------------------------------------------------------------
    const clearStatus = () => page.evaluate(() => { const s = document.getElementById("status"); s.textContent = ""; s.className = ""; });
    await clearStatus();
    await page.fill("#server", originB.replace("http://", ""));   // no scheme: the page's own (http:) is used
    await page.fill("#api-key", "");
    await page.click("#connect");
    await waitFor(page, () => document.getElementById("status").className === "error");
    check((await page.textContent("#status")).includes("API key"), "missing key is reported");
    await clearStatus();
    await page.fill("#api-key", "schlüssel");
    await page.click("#connect");
    await waitFor(page, () => document.getElementById("status").className === "error");
    check((await page.textContent("#status")).includes("printable ASCII"), "a key no header can carry is named as such: " +
      await page.textContent("#status"));
    await page.fill("#api-key", KEY);
    await page.fill("#sequence", SEQ.slice(0, 20));
    await page.press("#api-key", "Enter");   // Enter in the key field connects
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

    // ---- behind a reverse proxy under a path prefix (docker/nginx.conf's /api/performer/) ------------------
    // the page's calls are relative to it, so they go through the prefix too ("/model" would miss it)
    const seen = [];
    const proxy = http.createServer((req, res) => {
      seen.push(req.method + " " + req.url);
      if (!req.url.startsWith("/api/performer/")) { res.writeHead(404); res.end("not the service"); return; }
      const up = http.request({ host: "127.0.0.1", port: a.port, method: req.method, headers: req.headers,
        path: req.url.slice("/api/performer".length) }, (ur) => { res.writeHead(ur.statusCode, ur.headers); ur.pipe(res); });
      up.on("error", () => { res.writeHead(502); res.end(); });
      req.pipe(up);
    });
    await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
    try {
      await page.goto("http://127.0.0.1:" + proxy.address().port + "/api/performer/");
      await waitFor(page, () => document.getElementById("model-info").dataset.connected === "1", null, "connected via the prefix");
      await page.fill("#sequence", SEQ.slice(0, 12));
      await page.click("#analyze");
      await waitFor(page, () => document.getElementById("heatmap").dataset.length === "12", null, "heatmap via the prefix");
      await waitFor(page, () => Number(document.getElementById("predictions").dataset.rows || 0) === 12);
      check(seen.length > 0 && seen.every((u) => u.includes("/api/performer/")),
        "under a prefix every call goes through it: " + seen.join(", "));
    } finally {
      proxy.close();
    }
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
