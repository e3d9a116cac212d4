// Drives Debian's headless chromium through playwright-core for tests/test_browser.py.
// Usage: node drive.mjs <scenario> <page-url> [screenshot-path]; prints one JSON line with what the page showed.
import { chromium } from "playwright-core";

const [scenario, pageUrl, screenshotPath] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
  ],
});
const result = { scenario, console: [] };
try {
  const page = await browser.newPage();
  page.on("console", (message) => result.console.push(message.text()));
  page.on("pageerror", (error) => result.console.push(`pageerror: ${error.message}`));
  await page.goto(pageUrl, { waitUntil: "load" });

  if (scenario === "widget" || scenario === "screenshot") {
    await page.waitForFunction(() => customElements.get("voucherify-promo") !== undefined, null, { timeout: 10000 });
    await page.evaluate(() => {
      window.__events = [];
      for (const name of ["voucherify:validated", "voucherify:error"]) {
        document.addEventListener(name, (event) => window.__events.push({ type: name, detail: event.detail }));
      }
    });
    result.attempts = [];
    const codes = process.env.CODES ? process.env.CODES.split(",") : scenario === "widget" ? ["SAVE10", "EXPIRED", "NOPE"] : ["SAVE10"];
    for (const code of codes) {
      const before = await page.evaluate(() => window.__events.length);
      await page.locator("voucherify-promo input").fill(code);
      await page.locator("voucherify-promo button").click();
      await page.waitForFunction((n) => window.__events.length > n, before, { timeout: 10000 });
      const output = await page.locator("voucherify-promo output").textContent();
      const event = await page.evaluate(() => {
        const last = window.__events[window.__events.length - 1];
        return { type: last.type, detail: { ...last.detail, response: undefined } };
      });
      result.attempts.push({ code, output, event });
    }
    result.total = await page.locator("#total").textContent().catch(() => null);
    // What the page author wrote as a placeholder must stay text: no element may come out of it.
    result.shadow = await page.evaluate(() => {
      const root = document.querySelector("voucherify-promo").shadowRoot;
      return { placeholder: root.querySelector("input").placeholder, images: root.querySelectorAll("img").length };
    });
    // The widget's own style applied (under a CSP that refuses inline styles too): the button's colour.
    result.button = await page.evaluate(() => {
      const button = document.querySelector("voucherify-promo").shadowRoot.querySelector("button");
      return getComputedStyle(button).backgroundColor;
    });
    if (screenshotPath) await page.screenshot({ path: screenshotPath, fullPage: true });
  } else if (scenario === "loaded") {
    // Once the page has loaded, its blocking script tags have run or failed: is the widget defined?
    result.defined = await page.evaluate(() => customElements.get("voucherify-promo") !== undefined);
    result.isolated = await page.evaluate(() => window.crossOriginIsolated);
    result.inputs = await page.evaluate(() => {
      const root = document.querySelector("voucherify-promo")?.shadowRoot;
      return root ? root.querySelectorAll("input").length : null;
    });
  } else if (scenario === "sdk") {
    await page.waitForFunction(() => window.VoucherifySDK !== undefined, null, { timeout: 10000 });
    result.calls = await page.evaluate(async () => {
      const client = window.VoucherifySDK.VoucherifyClientSide({
        clientApplicationId: "placeholder-not-a-key",
        clientSecretKey: "placeholder-not-a-key",
        apiUrl: window.GATEWAY,
      });
      const order = { amount: 12000 };
      const calls = {
        validate: () => client.validate({ code: "SAVE10", amount: 12000 }),
        validateStackable: () => client.validateStackable({ redeemables: [{ object: "voucher", id: "PERCENT20" }], order }),
        redeemStackable: () => client.redeemStackable({ redeemables: [{ object: "voucher", id: "ONEUSE" }], order }),
        qualifications: () => client.qualifications({ customer: { source_id: "browser-shopper" }, order }),
        publish: () => client.publish("welcome", { customer: { source_id: "browser-shopper" } }),
        listVouchers: () => client.listVouchers({}),
      };
      const out = {};
      for (const [name, call] of Object.entries(calls)) {
        try {
          out[name] = { ok: true, value: await call() };
        } catch (error) {
          out[name] = { ok: false, error: { code: error.code ?? null, key: error.key ?? null, message: String(error.message ?? error) } };
        }
      }
      return out;
    });
  } else if (scenario === "idempotency") {
    // A keyed redemption sent twice with fetch (the second reads Idempotent-Replayed), then once more
    // with a new key; and the SDK with the key in customHeaders, twice.
    await page.waitForFunction(() => window.VoucherifySDK !== undefined, null, { timeout: 10000 });
    result.calls = await page.evaluate(async () => {
      const redeem = async (key) => {
        const response = await fetch(`${window.GATEWAY}/client/v1/redeem?code=ONEUSE`, {
          method: "POST",
          headers: { "Content-Type": "application/json", "Idempotency-Key": key },
          body: JSON.stringify({ order: { amount: 12000 } }),
        });
        return { status: response.status, replayed: response.headers.get("Idempotent-Replayed"), body: await response.json() };
      };
      const key = crypto.randomUUID();
      const out = { fetch: [await redeem(key), await redeem(key), await redeem(crypto.randomUUID())] };
      const client = window.VoucherifySDK.VoucherifyClientSide({
        clientApplicationId: "placeholder-not-a-key",
        clientSecretKey: "placeholder-not-a-key",
        apiUrl: window.GATEWAY,
        customHeaders: { "Idempotency-Key": crypto.randomUUID() },
      });
      out.sdk = [];
      for (let i = 0; i < 2; i++) {
        try {
          out.sdk.push({ ok: true, value: await client.redeem("SAVE10", { order: { amount: 12000 } }) });
        } catch (error) {
          out.sdk.push({ ok: false, error: { code: error.code ?? null, key: error.key ?? null } });
        }
      }
      return out;
    });
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
} catch (error) {
  result.error = String(error && error.stack ? error.stack : error);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + "\n");
