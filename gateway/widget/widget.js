/* <voucherify-promo>: a promo-code field that validates through the Voucherify gateway.
 *
 *   <script src="https://gateway.example.com/widget.js" defer></script>
 *   <voucherify-promo amount="12000" currency="EUR"></voucherify-promo>
 *
 * Attributes: amount (order total in cents), currency (display only), project (gateway project, default: the
 * gateway's default one), gateway (base URL; default: where this script was loaded from), customer (source_id).
 * Events (bubbling, composed): "voucherify:validated" with detail {code, valid, discount, total, reason, response}
 * and "voucherify:error" with detail {status, key, message, retryAfter} (seconds from Retry-After, or null).
 * On too_many_failed_codes (the gateway's failed-code budget) it says so, with the wait from Retry-After.
 * It holds no credential: the gateway injects them.
 */
(() => {
  "use strict";
  const SCRIPT_BASE = (() => {
    const src = document.currentScript && document.currentScript.src;
    return src ? new URL(".", src).href.replace(/\/$/, "") : "";
  })();

  const STYLE = `
    :host { display: block; font: inherit; }
    form { display: flex; gap: .5em; flex-wrap: wrap; align-items: center; }
    input { flex: 1 1 10em; padding: .5em; font: inherit; border: 1px solid #999; border-radius: 4px; }
    button { padding: .5em 1em; font: inherit; border: 0; border-radius: 4px; background: #1b5cff; color: #fff; cursor: pointer; }
    button[disabled] { opacity: .6; cursor: progress; }
    output { display: block; width: 100%; margin-top: .25em; min-height: 1.4em; }
    output[data-state="valid"] { color: #0a7a32; }
    output[data-state="invalid"], output[data-state="error"] { color: #b3261e; }`;

  // One constructed style sheet for every widget: not an inline style, so a CSP without 'unsafe-inline' in
  // style-src applies it. null where style sheets cannot be constructed (Safari before 16.4): a <style> then.
  const SHEET = (() => {
    try {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(STYLE);
      return sheet;
    } catch (_) {
      return null;
    }
  })();

  function money(cents, currency) {
    const value = (Number(cents) || 0) / 100;
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency: currency || "EUR" }).format(value);
    } catch (_) {
      return value.toFixed(2);
    }
  }

  // Retry-After in delta seconds (the gateway never sends an HTTP-date); null when absent or unreadable.
  function seconds(value) {
    return /^\s*\d+\s*$/.test(value || "") ? Number(value) : null;
  }

  function waitText(wait) {
    if (wait === null) return "later";
    if (wait < 90) return wait <= 1 ? "in 1 second" : `in ${wait} seconds`;
    if (wait < 90 * 60) return `in ${Math.ceil(wait / 60)} minutes`;
    return `in ${Math.ceil(wait / 3600)} hours`;
  }

  // Voucherify's stackable validation answers with redeemables[] (APPLICABLE) and, when a code does not
  // apply, inapplicable_redeemables[] or a redeemable whose status is INAPPLICABLE with result.error.
  function readValidation(body) {
    const all = [].concat(body.redeemables || [], body.inapplicable_redeemables || []);
    const first = all[0] || {};
    const valid = body.valid === true && first.status !== "INAPPLICABLE";
    const order = (valid && (first.order || body.order)) || body.order || {};
    const discount = order.total_applied_discount_amount ?? order.total_discount_amount ?? order.discount_amount ?? 0;
    const error = (first.result && first.result.error) || body.error || {};
    const reason = valid ? null : error.details || error.message || body.reason || first.status || "Code not valid";
    return { valid, discount, total: order.total_amount ?? null, reason };
  }

  function element(name, attributes) {
    const node = document.createElement(name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    return node;
  }

  class VoucherifyPromo extends HTMLElement {
    connectedCallback() {
      if (this.shadowRoot) return;
      const root = this.attachShadow({ mode: "open" });
      if (SHEET && "adoptedStyleSheets" in root) root.adoptedStyleSheets = [SHEET];
      else root.append(Object.assign(document.createElement("style"), { textContent: STYLE }));
      // Built element by element, no HTML parsed: a page that requires Trusted Types takes it too.
      const form = element("form", { part: "form", novalidate: "" });
      this.input = element("input", {
        part: "input", name: "code", autocomplete: "off", spellcheck: "false", "aria-label": "Promo code", required: "",
      });
      this.input.placeholder = this.getAttribute("placeholder") || "Promo code"; // a property: never parsed as HTML
      this.button = element("button", { part: "button", type: "submit" });
      this.button.textContent = "Apply";
      this.output = element("output", { part: "message", "aria-live": "polite" });
      form.append(this.input, this.button, this.output);
      root.append(form);
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        this.validate(this.input.value);
      });
    }

    get endpoint() {
      const base = (this.getAttribute("gateway") || SCRIPT_BASE || location.origin).replace(/\/+$/, "");
      const project = this.getAttribute("project");
      return `${base}${project ? "/" + encodeURIComponent(project) : ""}/client/v1/validations`;
    }

    show(state, text) {
      this.last = null; // what is on display is no longer that validation
      this.output.dataset.state = state;
      this.output.textContent = text;
    }

    emit(name, detail) {
      this.dispatchEvent(new CustomEvent(name, { detail, bubbles: true, composed: true }));
    }

    async validate(rawCode) {
      const code = String(rawCode || "").trim();
      if (!code) return this.show("invalid", "Enter a code.");
      const amount = Number(this.getAttribute("amount") || 0);
      const body = { redeemables: [{ object: "voucher", id: code }], order: { amount } };
      const customer = this.getAttribute("customer");
      if (customer) body.customer = { source_id: customer };
      // The same request while its validation is on display (the second click of a double click, after a
      // quick answer) is answered from it: each one sent counts against the shopper's rate limit and, for
      // a code that does not exist, the failed-code budget.
      const request = JSON.stringify([this.endpoint, body]);
      if (this.last && this.last.request === request) return this.emit("voucherify:validated", this.last.detail);
      this.button.disabled = true;
      this.show("pending", "Checking…");
      try {
        const response = await fetch(this.endpoint, {
          method: "POST",
          mode: "cors",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(body),
        });
        const parsed = await response.json().catch(() => null);
        // Only a JSON object is an answer, and a validation says valid: true or false. Anything else (a
        // shop's HTML page that a wrong gateway URL answered with 200, a JSON null) is an error: never
        // "Code not valid" for a code nobody checked.
        const payload = parsed !== null && typeof parsed === "object" && !Array.isArray(parsed) ? parsed : {};
        if (!response.ok || typeof payload.valid !== "boolean") {
          const retryAfter = seconds(response.headers.get("Retry-After"));
          let message;
          if (payload.key === "too_many_failed_codes") {
            message = `Too many codes that do not exist were tried from this connection. Try again ${waitText(retryAfter)}.`;
          } else if (response.status === 429) {
            message = "Too many attempts, try again in a moment.";
          } else {
            message = payload.message || "Could not check the code.";
          }
          this.show("error", message);
          this.emit("voucherify:error", { status: response.status, key: payload.key || null, message, retryAfter });
          return;
        }
        const result = readValidation(payload);
        const currency = this.getAttribute("currency");
        if (result.valid) this.show("valid", `${code}: ${money(result.discount, currency)} off`);
        else this.show("invalid", `${code}: ${result.reason}`);
        this.last = { request, detail: { code, ...result, response: payload } };
        this.emit("voucherify:validated", this.last.detail);
      } catch (error) {
        this.show("error", "The promotion service is unreachable.");
        this.emit("voucherify:error", { status: 0, key: null, message: String(error), retryAfter: null });
      } finally {
        this.button.disabled = false;
      }
    }
  }

  if (!customElements.get("voucherify-promo")) customElements.define("voucherify-promo", VoucherifyPromo);
})();
