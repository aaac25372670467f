// Drives the web console in headless Chromium: node console.mjs <base-url> <admin-token> <screenshot-dir>
// Started by tests/api/console.rs, which seeds a key with 38 calls over seven days ("batch
// jobs", 3 of them failed), an expired key ("old expired key") and one expiring in 3 days
// ("expiring soon key") before. Prints "ok: <step>" per step and
// "console: all checks passed" at the end; any failure exits non-zero naming the step.
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const [base, token, shots] = process.argv.slice(2);
if (!base || !token || !shots) {
  console.error('usage: node console.mjs <base-url> <admin-token> <screenshot-dir>');
  process.exit(2);
}
const origin = new URL(base).origin;
const executablePath = process.env.KEYGATE_TEST_CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
mkdirSync(shots, { recursive: true });
const profiles = [];
setTimeout(() => { console.error('console: timed out after 240 s'); process.exit(3); }, 240_000).unref();

/** A persistent context on a fresh, empty user-data-dir. */
async function launch(locale, viewport = { width: 1360, height: 900 }) {
  const dir = mkdtempSync(join(tmpdir(), 'keygate-chromium-'));
  profiles.push(dir);
  return chromium.launchPersistentContext(dir, { executablePath, args: ARGS, headless: true, locale, viewport });
}

const requests = [];
const problems = [];
/** The JSON bodies the console sent: [method, path, body]. */
const sent = [];
function watch(context) {
  context.on('request', (request) => {
    requests.push(request.url());
    if (request.method() !== 'GET' && request.postData()) {
      sent.push([request.method(), new URL(request.url()).pathname, JSON.parse(request.postData())]);
    }
  });
  context.on('page', (page) => watchPage(page));
  context.pages().forEach(watchPage);
}
function watchPage(page) {
  page.on('console', (msg) => {
    // The browser logs failed fetches (the 401 of the session probe, the wrong token, a refused
    // action): those are the API answering; anything else (CSP violations, missing texts,
    // exceptions) is a failure.
    if (msg.type() === 'error' && !/Failed to load resource: the server responded with a status of (400|401|404)/.test(msg.text())) {
      problems.push(`console error: ${msg.text()}`);
    }
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
}

let step = 'start';
/** Keys made beyond the planned ones (the limited key, once the server takes limits). */
let extraKeys = 0;
function ok(name) {
  console.log(`ok: ${name}`);
}

/** A call through the relay with a key, from this process (not the browser). */
async function relay(key, model) {
  const response = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }),
  });
  await response.text();
  return response.status;
}

/** A screenshot once the toast has faded. */
async function shot(page, file, fullPage = false) {
  await page.waitForFunction(() => !document.querySelector('#toast.show'));
  await page.waitForTimeout(250);
  await page.screenshot({ path: join(shots, file), fullPage });
}

/** Waits until the log pager's summary matches `pattern`; a timeout says what it showed. */
async function logCount(page, pattern) {
  try {
    await page.waitForFunction((source) => new RegExp(source).test(document.querySelector('#log-count')?.textContent),
      pattern.source, { timeout: 10_000 });
  } catch {
    const shown = await page.locator('#log-count').textContent().catch(() => '(no pager)');
    throw new Error(`the log pager shows "${shown}", not ${pattern}`);
  }
}

const LIMITS = ['rate_limit_window', 'rate_limit_requests', 'rate_limit_tokens', 'rate_limit_cost',
  'concurrency_limit', 'token_limit', 'daily_cost_limit', 'weekly_cost_limit', 'total_cost_limit'];
const limitsIn = (body) => Object.keys(body).filter((field) => LIMITS.includes(field)).sort();

const row = (page, name) => page.locator(`#keys-table tr[data-key-name="${name}"]`);
const badgeOf = (page, name) => row(page, name).locator('.badge');

async function badgeColour(page, name) {
  return badgeOf(page, name).evaluate((el) => [el.dataset.status, getComputedStyle(el).backgroundColor]);
}

const COLOURS = {
  active: 'rgb(220, 245, 227)', expiring: 'rgb(255, 241, 194)', expired: 'rgb(253, 226, 223)',
  disabled: 'rgb(232, 234, 238)', revoked: 'rgb(232, 234, 238)', pending: 'rgb(221, 232, 255)',
};
async function expectStatus(page, name, status) {
  await page.waitForFunction(([sel, want]) => document.querySelector(sel)?.dataset.status === want,
    [`#keys-table tr[data-key-name="${name}"] .badge`, status], { timeout: 10_000 });
  const [got, colour] = await badgeColour(page, name);
  assert.equal(got, status, `${name}: status`);
  assert.equal(colour, COLOURS[status], `${name}: badge colour of ${status}`);
}

async function showAllKeys(page) {
  await page.goto(`${base}/#/keys`);
  await page.selectOption('#key-page-size', '100');
  await page.waitForSelector('#keys-table');
}

/** Opens the create dialog, fills it, creates; returns the full key from the reveal dialog. */
async function createKey(page, { name, expiry, custom, period, unit, tags, description }) {
  await page.click('#create-key');
  const dialog = page.locator('#create-dialog');
  await dialog.locator('input[name="name"]').fill(name);
  if (description) await dialog.locator('textarea[name="description"]').fill(description);
  await dialog.locator(`input[name="expiry"][value="${expiry}"]`).check();
  if (custom) await dialog.locator('input[name="expires_at"]').fill(custom);
  if (period) {
    await dialog.locator('input[name="activation_period"]').fill(String(period));
    await dialog.locator('select[name="activation_unit"]').selectOption(unit);
  }
  if (tags) await dialog.locator('input[name="tags"]').fill(tags);
  await dialog.locator('[data-action="create"]').click();
  const reveal = page.locator('#reveal-dialog');
  await reveal.waitFor();
  const text = await reveal.textContent();
  assert.match(text, /you will not see it again/);
  const key = await page.inputValue('#revealed-key');
  assert.match(key, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a UUID v4 key');
  return key;
}

async function closeReveal(page) {
  await page.locator('#reveal-dialog .dialog-foot button', { hasText: 'I have saved it' }).click();
  await page.locator('#reveal-dialog').waitFor({ state: 'detached' });
}

async function confirmAction(page, name, action, expectText) {
  await row(page, name).locator(`[data-action="${action}"]`).click();
  const dialog = page.locator('dialog[open]');
  await dialog.waitFor();
  if (expectText) assert.match(await dialog.textContent(), expectText);
  await dialog.locator('[data-action="confirm"]').click();
}

async function main() {
  // --- A browser whose language is Chinese gets the console in Chinese.
  step = 'language from the browser';
  {
    const context = await launch('zh-CN');
    watch(context);
    const page = context.pages()[0] || await context.newPage();
    await page.goto(base);
    await page.waitForSelector('#login-form');
    assert.equal(await page.textContent('#login-form h1'), '登录');
    assert.equal(await page.getAttribute('html', 'lang'), 'zh-CN');
    await shot(page, 'login-zh.png');
    await context.close();
    ok(step);
  }

  const context = await launch('en-US');
  watch(context);
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin });
  const page = context.pages()[0] || await context.newPage();

  // --- Security headers of the console.
  step = 'security headers';
  const first = await page.goto(base);
  const headers = first.headers();
  assert.match(headers['content-security-policy'], /default-src 'self'/);
  assert.match(headers['content-security-policy'], /frame-ancestors 'none'/);
  assert.doesNotMatch(headers['content-security-policy'], /unsafe-inline|unsafe-eval/);
  assert.equal(headers['x-frame-options'], 'DENY');
  assert.equal(headers['x-content-type-options'], 'nosniff');
  ok(step);

  // --- Log in: a wrong token says so, the right one opens the key table.
  step = 'log in';
  await page.waitForSelector('#login-form');
  await shot(page, 'login.png');
  await page.fill('#login-token', 'not-the-admin-token');
  await page.click('#login-submit');
  await page.waitForSelector('#login-error:not([hidden])');
  assert.equal(await page.textContent('#login-error'), 'Wrong admin token.');
  await page.fill('#login-token', token);
  await page.click('#login-submit');
  await page.waitForSelector('#keys-table');
  const cookies = await context.cookies(base);
  const session = cookies.find((c) => c.name === 'keygate_session');
  assert.ok(session && session.httpOnly && session.sameSite === 'Strict', 'HttpOnly SameSite=Strict session cookie');
  assert.equal(await page.evaluate(() => document.cookie), '', 'the page cannot read the session');
  ok(step);

  // --- The seeded keys and their colours.
  step = 'status colours of the seeded keys';
  await showAllKeys(page);
  await expectStatus(page, 'old expired key', 'expired');
  await expectStatus(page, 'expiring soon key', 'expiring');
  ok(step);

  // --- Create a key in every expiry mode.
  step = 'create keys in every expiry mode';
  // The server's clock is some days ahead of this one (the seeded week): 20 days stays clear of "expiring soon".
  const inTwentyDays = new Date(Date.now() + 20 * 86400_000);
  const pad = (n) => String(n).padStart(2, '0');
  const customLocal = `${inTwentyDays.getFullYear()}-${pad(inTwentyDays.getMonth() + 1)}-${pad(inTwentyDays.getDate())}T12:30`;
  const modes = [
    { name: 'never key', expiry: 'never', status: 'active', description: 'used by the tests', tags: 'team-a, prod' },
    { name: 'one hour key', expiry: '1h', status: 'expiring' },
    { name: 'one day key', expiry: '1d', status: 'expiring' },
    { name: 'seven day key', expiry: '7d', status: 'expiring' },
    { name: 'thirty day key', expiry: '30d', status: 'active' },
    { name: 'ninety day key', expiry: '90d', status: 'active' },
    { name: 'half year key', expiry: '180d', status: 'active' },
    { name: 'one year key', expiry: '365d', status: 'active' },
    { name: 'custom date key', expiry: 'custom', custom: customLocal, status: 'active' },
    { name: 'activation key', expiry: 'activation', period: 2, unit: 'hours', status: 'pending' },
  ];
  let copied = null;
  for (const mode of modes) {
    const key = await createKey(page, mode);
    if (mode.expiry === 'never') {
      await page.click('#copy-key');
      await page.waitForFunction(() => document.querySelector('#copy-key').textContent.includes('Copied'));
      copied = await page.evaluate(() => navigator.clipboard.readText());
      assert.equal(copied, key, 'the clipboard holds the shown key');
    }
    await closeReveal(page);
    assert.equal(await page.locator('#revealed-key').count(), 0, 'the key is gone with the dialog');
    await expectStatus(page, mode.name, mode.status);
  }
  assert.match(await row(page, 'never key').textContent(), /Active ∞/);
  assert.match(await row(page, 'custom date key').locator('td').nth(3).textContent(), /12:30\s*in \d+ days/);
  assert.match(await row(page, 'activation key').textContent(), /2 hours after first use/);
  await shot(page, 'keys.png', true);
  ok(step);

  // --- A refused action shows the server's words.
  step = 'server error shown in the dialog';
  await page.click('#create-key');
  await page.fill('#create-dialog input[name="name"]', 'bad ip key');
  await page.fill('#create-dialog input[name="allowed_ips"]', 'not-an-ip');
  await page.click('#create-dialog [data-action="create"]');
  // Next to the field the 400 names, which gets the focus.
  const alert = page.locator('#create-dialog label:has(input[name="allowed_ips"]) .field-error[role="alert"]');
  await alert.waitFor();
  assert.match(await alert.textContent(), /^allowed_ips\[0\]: /);
  assert.equal(await page.evaluate(() => document.activeElement.name), 'allowed_ips');
  await page.keyboard.press('Escape');
  await page.locator('#create-dialog').waitFor({ state: 'detached' });
  ok(step);

  // --- The copied key works against the relay (mock upstream); calls make stats and logs.
  step = 'use the copied key';
  let calls = 0;
  for (let i = 0; i < 12; i++) { assert.equal(await relay(copied, 'gpt-test'), 200); calls++; }
  for (let i = 0; i < 6; i++) { assert.equal(await relay(copied, 'gpt-4o-mini'), 200); calls++; }
  for (let i = 0; i < 5; i++) { assert.equal(await relay(copied, 'gpt-fail'), 500); calls++; }
  ok(step);

  // --- Stats: the chart is drawn from those calls.
  step = 'stats chart';
  await showAllKeys(page);
  await row(page, 'never key').locator('[data-action="stats"]').click();
  await page.waitForSelector('[data-stat="total"]');
  for (let tries = 0; ; tries++) {
    const total = await page.textContent('[data-stat="total"] .value');
    if (total === String(calls)) break;
    assert.ok(tries < 50, `stats never showed ${calls} calls (last: ${total})`);
    await page.waitForTimeout(200);
    await page.click('[data-days="7"]');
    await page.waitForSelector('[data-stat="total"]');
  }
  await page.click('[data-days="30"]');
  await page.waitForSelector('#calls-chart');
  const today = await page.locator('#calls-chart g.day').last();
  assert.equal(await today.getAttribute('data-success'), '18');
  assert.equal(await today.getAttribute('data-error'), '5');
  assert.equal(await today.locator('rect.bar-ok').count(), 1);
  assert.equal(await today.locator('rect.bar-err').count(), 1);
  assert.equal(await page.locator('#calls-chart g.day').count(), 30);
  const okHeight = Number(await today.locator('rect.bar-ok').getAttribute('height'));
  const errHeight = Number(await today.locator('rect.bar-err').getAttribute('height'));
  assert.ok(Math.abs(okHeight / errHeight - 18 / 5) < 0.01, 'bar heights in proportion');
  assert.equal(await page.textContent('[data-stat="rate"] .value'), '78.3%');
  assert.equal(await page.locator('#model-table tbody tr').count(), 3);
  assert.match(await page.textContent('#model-table'), /gpt-test[\s\S]*gpt-4o-mini[\s\S]*gpt-fail/);
  await shot(page, 'stats.png', true);
  ok(step);

  // --- Logs: paged, filtered by key, status and model.
  step = 'logs';
  await page.goto(`${base}/#/logs`);
  await page.waitForSelector('#logs-table');
  await page.selectOption('#log-page-size', '10');
  const keyId = await page.locator('#log-key option', { hasText: 'never key' }).getAttribute('value');
  await page.selectOption('#log-key', keyId);
  await logCount(page, /of 3 · 23 in all/);
  await page.click('#log-next');
  await logCount(page, /Page 2 of 3/);
  assert.equal(await page.locator('#logs-table tbody tr').count(), 10);
  await page.click('#log-next');
  await logCount(page, /Page 3 of 3/);
  assert.equal(await page.locator('#logs-table tbody tr').count(), 3);
  await page.selectOption('#log-status', 'error');
  await logCount(page, /Page 1 of 1 · 5 in all/);
  const statuses = await page.locator('#logs-table tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.status));
  assert.deepEqual(statuses, ['error', 'error', 'error', 'error', 'error']);
  assert.match(await page.textContent('#logs-table tbody tr'), /500/);
  await page.selectOption('#log-status', '');
  await page.fill('#log-model', 'gpt-4o-mini');
  await logCount(page, /· 6 in all/);
  await page.fill('#log-model', '');
  await logCount(page, /· 23 in all/);
  const ids = await page.locator('#logs-table tbody tr').evaluateAll((rows) => rows.map((r) => Number(r.dataset.logId)));
  assert.deepEqual(ids, [...ids].sort((a, b) => b - a), 'newest first');
  await shot(page, 'logs.png', true);
  // All keys: the seeded key's calls too; the error filter still holds across keys.
  await page.selectOption('#log-key', '');
  await page.selectOption('#log-status', 'error');
  await logCount(page, /Page 1 of 1 · 8 in all/);
  // A key's own log page (from the key table's Logs button) is that key's only.
  await showAllKeys(page);
  await row(page, 'batch jobs').locator('[data-action="logs"]').click();
  await logCount(page, /· 38 in all/);
  assert.ok(await page.locator('#log-key').isDisabled());
  ok(step);

  // --- A week of calls (seeded over seven days of the server's clock) in the 7-day view.
  step = 'stats over a week';
  await showAllKeys(page);
  await row(page, 'batch jobs').locator('[data-action="stats"]').click();
  await page.click('[data-days="7"]');
  await page.waitForFunction(() => document.querySelectorAll('#calls-chart g.day').length === 7);
  const week = await page.locator('#calls-chart g.day').evaluateAll((days) => days.map((d) => Number(d.dataset.success) + Number(d.dataset.error)));
  assert.ok(week.every((n) => n > 0), `a call every day: ${week}`);
  assert.equal(await page.textContent('[data-stat="total"] .value'), '38');
  await shot(page, 'stats-week.png', true);
  ok(step);

  // --- Limits: sent only when filled in, and stored by the server; shown with the key (the
  // display of spend is checked on key answers given known figures).
  step = 'limits';
  assert.ok(sent.filter(([m, path]) => m === 'POST' && path === '/api/api-keys').length >= 10);
  for (const [, path, body] of sent) assert.deepEqual(limitsIn(body), [], `no limit sent to ${path}`);
  await showAllKeys(page);
  await page.click('#create-key');
  await page.fill('#create-dialog input[name="name"]', 'limited key');
  await page.fill('#create-dialog input[name="token_limit"]', '1000');
  await page.fill('#create-dialog input[name="daily_cost_limit"]', '2.5');
  await page.click('#create-dialog [data-action="create"]');
  await page.locator('#reveal-dialog').waitFor();
  const [, , limitedBody] = sent.at(-1);
  assert.deepEqual(limitsIn(limitedBody), ['daily_cost_limit', 'token_limit']);
  assert.equal(limitedBody.token_limit, 1000);
  assert.equal(limitedBody.daily_cost_limit, 2.5);
  extraKeys += 1;
  await closeReveal(page);
  const limited = await page.evaluate(async () => (await fetch('/api/api-keys?search=limited%20key')).json());
  assert.equal(limited.items[0].token_limit, 1000, 'the server stored the limits');
  assert.equal(limited.items[0].daily_cost_limit, 2.5);
  const withLimits = (key) => ({
    ...key, token_limit: 1000, total_cost_limit: 0, daily_cost_limit: 2.5, weekly_cost_limit: 0,
    rate_limit_window: 1, rate_limit_requests: 60, rate_limit_tokens: 0, rate_limit_cost: 0,
    concurrency_limit: 0, total_cost: 0.5, daily_cost: 1.25, weekly_cost: 1.5,
  });
  await page.route(/\/api\/api-keys(\/\d+)?(\?.*)?$/, async (route) => {
    if (route.request().method() === 'PATCH') {
      await route.fulfill({ json: withLimits({ ...JSON.parse(route.request().postData()) }) });
      return;
    }
    const response = await route.fetch();
    const json = await response.json();
    await route.fulfill({ response, json: json.items ? { ...json, items: json.items.map(withLimits) } : withLimits(json) });
  });
  await showAllKeys(page);
  assert.match(await row(page, 'never key').textContent(), /Today \$1\.2500[\s\S]*This week \$1\.5000/);
  await row(page, 'never key').locator('[data-action="edit"]').click();
  assert.equal(await page.inputValue('#edit-dialog input[name="token_limit"]'), '1000');
  assert.equal(await page.inputValue('#edit-dialog input[name="concurrency_limit"]'), '');
  await page.fill('#edit-dialog input[name="token_limit"]', '');
  await page.fill('#edit-dialog input[name="concurrency_limit"]', '4');
  await page.click('#edit-dialog [data-action="save"]');
  await page.locator('#edit-dialog').waitFor({ state: 'detached' });
  const [method, , patch] = sent.at(-1);
  assert.equal(method, 'PATCH');
  assert.deepEqual(patch, { token_limit: 0, concurrency_limit: 4 }, 'only the changed limits (cleared: 0)');
  await page.goto(`${base}/#/keys/${keyId}/stats`);
  await page.waitForSelector('#quota-table');
  const quota = await page.textContent('#quota-table');
  assert.match(quota, /Lifetime tokens[\s\S]*\/ 1,000/);
  assert.match(quota, /Daily cost \(USD\)\$1\.25 \/ \$2\.50\$1\.25/);
  assert.match(quota, /60 per 1 min/);
  await page.unroute(/\/api\/api-keys(\/\d+)?(\?.*)?$/);
  ok(step);

  // --- Renew the expired key.
  step = 'renew an expired key';
  await showAllKeys(page);
  await row(page, 'old expired key').locator('[data-action="renew"]').click();
  await page.locator('#renew-dialog input[name="renew"][value="90"]').check();
  await page.click('#renew-dialog [data-action="renew"]');
  await expectStatus(page, 'old expired key', 'active');
  ok(step);

  // --- Batch renew: only the chosen key of those expiring within 7 days.
  step = 'batch renew';
  await page.click('#batch-renew');
  const batch = page.locator('#batch-dialog');
  await batch.waitFor();
  await shot(page, 'batch-renew.png');
  await batch.locator('#batch-all').uncheck();
  await batch.locator('label', { hasText: 'expiring soon key' }).locator('input').check();
  await batch.locator('input[name="extend"][value="90"]').check();
  await batch.locator('[data-action="batch-renew"]').click();
  await batch.waitFor({ state: 'detached' });
  await expectStatus(page, 'expiring soon key', 'active');
  await expectStatus(page, 'seven day key', 'expiring');
  ok(step);

  // --- Disable and enable.
  step = 'disable and enable';
  await row(page, 'thirty day key').locator('[data-action="disable"]').click();
  await expectStatus(page, 'thirty day key', 'disabled');
  await row(page, 'thirty day key').locator('[data-action="enable"]').click();
  await expectStatus(page, 'thirty day key', 'active');
  ok(step);

  // --- Edit.
  step = 'edit';
  await row(page, 'ninety day key').locator('[data-action="edit"]').click();
  await page.fill('#edit-dialog input[name="name"]', 'renamed key');
  await page.fill('#edit-dialog input[name="tags"]', 'team-b');
  await page.click('#edit-dialog [data-action="save"]');
  await row(page, 'renamed key').waitFor();
  assert.match(await row(page, 'renamed key').textContent(), /team-b/);
  ok(step);

  // --- Regenerate: a new key shown once; the old one keeps working for the grace chosen
  // (24 hours here), and stops at once on a regenerate without one.
  step = 'regenerate';
  await row(page, 'never key').locator('[data-action="regenerate"]').click();
  await page.locator('dialog[open] #regenerate-grace').selectOption('24');
  await page.locator('dialog[open] [data-action="confirm"]').click();
  await page.locator('#reveal-dialog').waitFor();
  const graced = await page.inputValue('#revealed-key');
  assert.notEqual(graced, copied);
  await closeReveal(page);
  assert.equal(await relay(copied, 'gpt-test'), 200, 'the replaced key works during its grace');
  assert.equal(await relay(graced, 'gpt-test'), 200);
  await confirmAction(page, 'never key', 'regenerate', /stops working/);
  await page.locator('#reveal-dialog').waitFor();
  const regenerated = await page.inputValue('#revealed-key');
  assert.notEqual(regenerated, graced);
  await closeReveal(page);
  assert.equal(await relay(copied, 'gpt-test'), 401);
  assert.equal(await relay(graced, 'gpt-test'), 401);
  assert.equal(await relay(regenerated, 'gpt-test'), 200);
  ok(step);

  // --- Revoke.
  step = 'revoke';
  await confirmAction(page, 'one day key', 'revoke', /never be used again/);
  await expectStatus(page, 'one day key', 'revoked');
  assert.equal(await row(page, 'one day key').locator('[data-action="renew"]').count(), 0);
  ok(step);

  // --- Delete, after a confirm that says the logs go too.
  step = 'delete';
  await confirmAction(page, 'one year key', 'delete', /ALL its call logs/);
  await row(page, 'one year key').waitFor({ state: 'detached' });
  ok(step);

  // --- Filters: search, tag, status.
  step = 'filters';
  await page.fill('#key-search', 'custom');
  await page.waitForFunction(() => document.querySelectorAll('#keys-table tbody tr').length === 1);
  await page.fill('#key-search', '');
  await page.fill('#key-tag', 'team-a');
  await page.press('#key-tag', 'Enter');
  await page.waitForFunction(() => document.querySelectorAll('#keys-table tbody tr').length === 1
    && document.querySelector('#keys-table tbody tr').dataset.keyName === 'never key');
  await page.fill('#key-tag', '');
  await page.press('#key-tag', 'Enter');
  await page.selectOption('#key-status', 'revoked');
  await page.waitForFunction(() => [...document.querySelectorAll('#keys-table tbody tr')].map((r) => r.dataset.keyName).join() === 'one day key');
  await page.selectOption('#key-status', '');
  await page.waitForFunction((n) => document.querySelectorAll('#keys-table tbody tr').length === n, 12 + extraKeys);
  // The server sorts all keys (not only the page): name ascending, then descending.
  const sortedBy = (direction, count) => page.waitForFunction(([direction, count]) => {
    const names = [...document.querySelectorAll('#keys-table tbody tr')].map((r) => r.dataset.keyName.toLowerCase());
    const ordered = names.every((name, i) => i === 0 || (direction === 'ascending' ? names[i - 1] <= name : names[i - 1] >= name));
    return document.querySelector('#keys-table th[data-col="name"]')?.getAttribute('aria-sort') === direction
      && names.length === count && ordered;
  }, [direction, count]);
  await page.click('#keys-table th[data-col="name"] button');
  await sortedBy('ascending', 12 + extraKeys);
  await page.click('#keys-table th[data-col="name"] button');
  await sortedBy('descending', 12 + extraKeys);
  ok(step);

  // --- Keyboard: a dialog keeps focus, Esc closes it and focus comes back.
  step = 'keyboard';
  await page.focus('#create-key');
  await page.keyboard.press('Enter');
  await page.locator('#create-dialog').waitFor();
  for (let i = 0; i < 40; i++) {
    await page.keyboard.press('Tab');
    assert.ok(await page.evaluate(() => Boolean(document.activeElement.closest('#create-dialog'))), 'focus stays in the dialog');
  }
  await page.keyboard.press('Escape');
  await page.locator('#create-dialog').waitFor({ state: 'detached' });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'create-key');
  ok(step);

  // --- Switch language.
  step = 'switch language';
  await page.selectOption('#lang-select', 'zh');
  await page.waitForFunction(() => document.querySelector('main h1')?.textContent === 'API 密钥');
  assert.equal(await page.textContent('#nav-keys'), '密钥');
  assert.match(await row(page, 'old expired key').textContent(), /活跃/);
  await shot(page, 'keys-zh.png', true);
  await page.goto(`${base}/#/keys/${keyId}/stats`);
  await page.waitForSelector('#calls-chart');
  assert.match(await page.textContent('main h1'), /的统计/);
  await shot(page, 'stats-zh.png', true);
  await page.selectOption('#lang-select', 'en');
  await page.waitForFunction(() => /^Stats of/.test(document.querySelector('main h1')?.textContent));
  ok(step);

  // --- Both dictionaries have every text (a text missing at run time is a console error too).
  step = 'dictionaries';
  const [onlyEn, onlyZh, untranslated] = await page.evaluate(async () => {
    const { dictionaries: { en, zh } } = await import('/static/i18n.js');
    const same = Object.keys(en).filter((k) => zh[k] === en[k] && /[a-z]{3}/i.test(en[k].replace(/keygate|HTTP|IP|USD|User-Agent|CIDR|KEYGATE_ADMIN_TOKEN|Authorization|Bearer|X-API-Key|prefix|\/v1\S*|\{\w+\}/g, '')));
    return [Object.keys(en).filter((k) => !(k in zh)), Object.keys(zh).filter((k) => !(k in en)), same];
  });
  assert.deepEqual([onlyEn, onlyZh, untranslated], [[], [], []]);
  ok(step);

  // --- Phone width: usable, nothing wider than the screen.
  step = 'phone width';
  await page.setViewportSize({ width: 390, height: 844 });
  await showAllKeys(page);
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), 'no sideways scrolling');
  await shot(page, 'keys-phone.png');
  await page.click('#create-key');
  await shot(page, 'create-phone.png');
  await page.keyboard.press('Escape');
  for (const [view, ready, file] of [[`#/keys/${keyId}/stats`, '#calls-chart', 'stats-phone.png'], ['#/logs', '#logs-table', 'logs-phone.png']]) {
    await page.goto(`${base}/${view}`);
    await page.waitForSelector(ready);
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), `no sideways scrolling on ${view}`);
    await shot(page, file);
  }
  await page.setViewportSize({ width: 1360, height: 900 });
  await showAllKeys(page);
  ok(step);

  // --- Create dialog screenshot (every expiry choice, restrictions, limits).
  await page.click('#create-key');
  await page.locator('#create-dialog input[name="expiry"][value="activation"]').check();
  await shot(page, 'create.png');
  await page.keyboard.press('Escape');

  // --- A view that cannot load says why, in the server's words.
  step = 'error state';
  await page.goto(`${base}/#/keys/987654/stats`);
  await page.waitForSelector('main .state-error');
  assert.match(await page.textContent('main .state-error'), /^Could not load: No API key with that id/);
  ok(step);

  // --- Nothing secret is stored by the page or sent in a URL.
  step = 'no secret stored or in a URL';
  const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }));
  for (const secret of [token, copied, graced, regenerated]) {
    assert.ok(!stored.includes(secret), 'no secret in web storage');
    assert.ok(!requests.some((url) => url.includes(secret)), 'no secret in a URL');
  }
  ok(step);

  // --- Log out: the session is gone.
  step = 'log out';
  await page.click('#logout');
  await page.waitForSelector('#login-form');
  const status = await page.evaluate(() => fetch('/api/api-keys').then((r) => r.status));
  assert.equal(status, 401);
  ok(step);

  // --- Every request the browser made went to keygate's own origin.
  step = 'same origin only';
  const foreign = requests.filter((url) => new URL(url).origin !== origin);
  assert.deepEqual(foreign, [], 'requests to other origins');
  assert.ok(requests.length > 20);
  ok(step);

  step = 'no console errors';
  assert.deepEqual(problems, []);
  ok(step);
  await context.close();
}

try {
  await main();
  console.log('console: all checks passed');
} catch (err) {
  console.error(`FAILED at step "${step}": ${err.stack || err}`);
  if (problems.length) console.error(problems.join('\n'));
  process.exitCode = 1;
} finally {
  for (const dir of profiles) rmSync(dir, { recursive: true, force: true });
}
process.exit(process.exitCode || 0);
