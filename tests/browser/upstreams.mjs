// Drives the console's Upstreams page and the key dialog's upstream binding in headless
// Chromium: node upstreams.mjs <base-url> <admin-token> <screenshot-dir>
// Started by tests/api/console.rs against a server with no upstream configured. Prints
// "ok: <step>" per step and "upstreams: all checks passed" at the end; any failure exits
// non-zero naming the step.
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const [base, token, shots] = process.argv.slice(2);
if (!base || !token || !shots) {
  console.error('usage: node upstreams.mjs <base-url> <admin-token> <screenshot-dir>');
  process.exit(2);
}
const origin = new URL(base).origin;
const executablePath = process.env.KEYGATE_TEST_CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
mkdirSync(shots, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'keygate-chromium-'));
setTimeout(() => { console.error('upstreams: timed out after 180 s'); process.exit(3); }, 180_000).unref();

// Credentials typed into the dialogs: never to be seen again in the page, storage or a URL.
const SECRET = 'sk-test-0123456789abcdefWXYZ';
const CLAUDE_SECRET = 'sk-ant-test-9876543210fedcbaQRST';
const NEW_SECRET = 'sk-test-rotated-0123456789ABCD';

const requests = [];
const problems = [];
/** The JSON bodies the console sent: [method, path, body]. */
const sent = [];

let step = 'start';
const ok = (name) => console.log(`ok: ${name}`);

async function shot(page, file, fullPage = false) {
  await page.waitForFunction(() => !document.querySelector('#toast.show'));
  await page.waitForTimeout(250);
  await page.screenshot({ path: join(shots, file), fullPage });
}

/** What the server has (through the console's session). */
const upstreamsNow = (page) => page.evaluate(async () => (await (await fetch('/api/upstreams')).json()).items);
const keyNow = (page, id) => page.evaluate(async (id) => (await fetch(`/api/api-keys/${id}`)).json(), id);
const lastSent = (method, path) => sent.filter(([m, p]) => m === method && p === path).at(-1)?.[2];

const row = (page, name) => page.locator(`#upstreams-table tr[data-upstream-name="${name}"]`);
const dialog = (page) => page.locator('#upstream-dialog');

async function expectState(page, name, state, text) {
  await page.waitForFunction(([sel, want]) => document.querySelector(sel)?.dataset.state === want,
    [`#upstreams-table tr[data-upstream-name="${name}"] .badge`, state], { timeout: 10_000 });
  if (text) assert.match(await row(page, name).locator('.badge').textContent(), text);
}

async function openUpstreams(page) {
  await page.goto(`${base}/#/upstreams`);
  await page.waitForSelector('#upstreams-table');
}

/** Fills the add or edit dialog; absent fields are left as they are. */
async function fillUpstream(page, fields) {
  const d = dialog(page);
  await d.waitFor();
  for (const [name, value] of Object.entries(fields)) {
    const control = d.locator(`[name="${name}"]`);
    const tag = await control.evaluate((el) => el.tagName);
    if (tag === 'SELECT') await control.selectOption(value);
    else if (typeof value === 'boolean') await control.setChecked(value);
    else await control.fill(String(value));
  }
}

async function save(page) {
  await dialog(page).locator('.dialog-foot .btn-primary').click();
  await dialog(page).waitFor({ state: 'detached' });
}

async function main() {
  const context = await chromium.launchPersistentContext(profile, {
    executablePath, args: ARGS, headless: true, locale: 'en-US', viewport: { width: 1360, height: 900 },
  });
  context.on('request', (request) => {
    requests.push(request.url());
    if (request.method() !== 'GET' && request.postData()) {
      sent.push([request.method(), new URL(request.url()).pathname, JSON.parse(request.postData())]);
    }
  });
  const page = context.pages()[0] || await context.newPage();
  page.on('console', (msg) => {
    // Refused requests (the 400 of a bad field, the 409 of a bound upstream) are the API
    // answering; anything else (CSP, missing texts, exceptions) is a failure.
    if (msg.type() === 'error' && !/Failed to load resource: the server responded with a status of (400|401|409)/.test(msg.text())) {
      problems.push(`console error: ${msg.text()}`);
    }
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));

  step = 'log in';
  await page.goto(base);
  await page.fill('#login-token', token);
  await page.click('#login-submit');
  await page.waitForSelector('#keys-table, #keys-empty');
  ok(step);

  // --- The page in the nav; the built-in default shown read-only.
  step = 'built-in default';
  await page.click('#nav-upstreams');
  await page.waitForSelector('#upstreams-table');
  assert.equal(await page.getAttribute('#nav-upstreams', 'aria-current'), 'page');
  assert.equal(await page.textContent('main h1'), 'Upstreams');
  const builtin = row(page, 'default');
  assert.match(await builtin.textContent(), /KEYGATE_UPSTREAM_URL/);
  assert.match(await builtin.textContent(), /Read-only/);
  assert.deepEqual(await builtin.locator('button').evaluateAll((bs) => bs.map((b) => b.dataset.action)), ['test'], 'only a test on the built-in upstream');
  await expectState(page, 'default', 'healthy', /^Healthy$/);
  // Test: asks it for its model list (the mock answers), the answer in a toast.
  await builtin.locator('[data-action="test"]').click();
  await page.waitForFunction(() => /Upstream default answered HTTP 200 in \d+ ms \(1 models\)/.test(document.querySelector('#toast.show')?.textContent || ''));
  assert.match(await page.textContent('#upstreams-empty'), /No upstreams configured/);
  ok(step);

  // --- Add: the kind sets the credential header and the example URL; a bad base URL is
  // refused next to its field; the credential is sent once.
  step = 'add an upstream';
  await page.click('#add-upstream');
  const d = dialog(page);
  await d.waitFor();
  assert.equal(await d.locator('select[name="auth_header"]').inputValue(), 'bearer');
  assert.match(await d.textContent(), /https:\/\/api\.openai\.com\/v1/);
  await d.locator('select[name="kind"]').selectOption('anthropic');
  assert.equal(await d.locator('select[name="auth_header"]').inputValue(), 'x-api-key', 'the header follows the kind');
  assert.match(await d.textContent(), /https:\/\/api\.anthropic\.com/);
  await d.locator('select[name="kind"]').selectOption('openai');
  assert.equal(await d.locator('select[name="auth_header"]').inputValue(), 'bearer');
  await fillUpstream(page, {
    name: 'openai-main', base_url: 'api.openai.com/v1', api_key: SECRET,
    models: 'gpt-4o*\ngpt-4.1, o3', model_map: 'gpt-4=gpt-4o', priority: 5, weight: 3,
    timeout_seconds: 30, extra_headers: 'OpenAI-Organization: org-123',
  });
  await d.locator('[data-action="create"]').click();
  const fieldError = d.locator('label:has(input[name="base_url"]) .field-error');
  await fieldError.waitFor();
  assert.match(await fieldError.textContent(), /^base_url: .*http:\/\/ or https:\/\//);
  assert.equal(await d.locator('input[name="base_url"]').getAttribute('aria-invalid'), 'true');
  assert.equal(await page.evaluate(() => document.activeElement.name), 'base_url', 'the refused field has the focus');
  assert.ok(await d.locator('.dialog-body > .alert').isHidden(), 'the message is next to the field, not on top');
  await shot(page, 'upstream-field-error.png');
  await fillUpstream(page, { base_url: 'https://api.openai.com/v1/' });
  await save(page);
  await expectState(page, 'openai-main', 'healthy', /^Healthy$/);
  const added = lastSent('POST', '/api/upstreams');
  assert.deepEqual(added, {
    name: 'openai-main', kind: 'openai', base_url: 'https://api.openai.com/v1/', auth_header: 'bearer',
    models: ['gpt-4o*', 'gpt-4.1', 'o3'], model_map: { 'gpt-4': 'gpt-4o' }, priority: 5, weight: 3, enabled: true,
    timeout_seconds: 30, stream_usage: 'inject', extra_headers: { 'OpenAI-Organization': 'org-123' }, api_key: SECRET,
  });
  const text = await row(page, 'openai-main').textContent();
  assert.match(text, /OpenAI-compatible/);
  assert.match(text, /https:\/\/api\.openai\.com\/v1Credential set …WXYZAuthorization: Bearer/);
  assert.match(text, /gpt-4o\*gpt-4\.1o3/);
  assert.match(text, /1 renamed/);
  assert.match(text, /5 \/ 3/);
  assert.equal(await page.locator('#upstreams-empty').count(), 0);
  let stored = (await upstreamsNow(page)).find((u) => u.name === 'openai-main');
  assert.equal(stored.has_api_key, true);
  assert.equal(stored.extra_headers['openai-organization'], 'org-123');
  assert.equal(stored.timeout_seconds, 30);
  ok(step);

  step = 'add more upstreams';
  await page.click('#add-upstream');
  await fillUpstream(page, { name: 'claude-main', kind: 'anthropic', base_url: 'https://api.anthropic.com', api_key: CLAUDE_SECRET });
  await save(page);
  await expectState(page, 'claude-main', 'healthy');
  assert.match(await row(page, 'claude-main').textContent(), /Anthropic Messages.*Credential set …QRSTx-api-key header/);
  assert.equal(lastSent('POST', '/api/upstreams').auth_header, 'x-api-key');
  await page.click('#add-upstream');
  await fillUpstream(page, { name: 'local-vllm', base_url: 'http://127.0.0.1:8001/v1', models: 'llama-*', priority: 10 });
  await save(page);
  await expectState(page, 'local-vllm', 'healthy');
  assert.match(await row(page, 'local-vllm').textContent(), /No credential/);
  assert.ok(!('api_key' in lastSent('POST', '/api/upstreams')), 'no credential typed, none sent');
  const order = await page.locator('#upstreams-table tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.upstreamName));
  assert.deepEqual(order, ['default', 'openai-main', 'claude-main', 'local-vllm']);
  ok(step);

  // --- Edit: the credential is never filled in; saving without typing one keeps it.
  step = 'edit keeps the credential';
  await row(page, 'openai-main').locator('[data-action="edit"]').click();
  await d.waitFor();
  assert.equal(await d.locator('input[name="api_key"]').inputValue(), '', 'the credential is not filled in');
  assert.equal(await d.locator('input[name="api_key"]').getAttribute('type'), 'password');
  assert.match(await d.textContent(), /Set — leave empty to keep it/);
  assert.equal(await d.locator('input[name="name"]').inputValue(), 'openai-main');
  assert.equal(await d.locator('textarea[name="models"]').inputValue(), 'gpt-4o*\ngpt-4.1\no3');
  assert.equal(await d.locator('textarea[name="model_map"]').inputValue(), 'gpt-4=gpt-4o');
  assert.equal(await d.locator('textarea[name="extra_headers"]').inputValue(), 'openai-organization: org-123');
  assert.equal(await d.locator('input[name="timeout_seconds"]').inputValue(), '30');
  await shot(page, 'upstream-edit.png');
  await fillUpstream(page, { weight: 7 });
  await save(page);
  assert.deepEqual(lastSent('PATCH', `/api/upstreams/${stored.id}`), { weight: 7 }, 'only the change, no credential');
  await page.waitForFunction(() => /5 \/ 7/.test(document.querySelector('#upstreams-table tr[data-upstream-name="openai-main"]')?.textContent));
  stored = (await upstreamsNow(page)).find((u) => u.name === 'openai-main');
  assert.equal(stored.has_api_key, true, 'the credential is kept');
  assert.equal(stored.api_key_preview, '…WXYZ');
  assert.equal(stored.weight, 7);
  // A typed credential replaces it; a bad field in the edit dialog is refused next to it too.
  await row(page, 'openai-main').locator('[data-action="edit"]').click();
  await fillUpstream(page, { api_key: NEW_SECRET, extra_headers: 'Authorization: Bearer x' });
  await d.locator('[data-action="save"]').click();
  await d.locator('label:has(textarea[name="extra_headers"]) .field-error').waitFor();
  assert.match(await d.locator('label:has(textarea[name="extra_headers"]) .field-error').textContent(), /^extra_headers: .*credential/);
  await fillUpstream(page, { extra_headers: 'openai-organization: org-123' });
  await save(page);
  assert.deepEqual(lastSent('PATCH', `/api/upstreams/${stored.id}`), { api_key: NEW_SECRET });
  stored = (await upstreamsNow(page)).find((u) => u.name === 'openai-main');
  assert.equal(stored.api_key_preview, '…ABCD');
  ok(step);

  // --- Disable and enable.
  step = 'disable and enable';
  await row(page, 'local-vllm').locator('[data-action="disable"]').click();
  await expectState(page, 'local-vllm', 'disabled', /^Disabled$/);
  assert.equal(await row(page, 'local-vllm').locator('td[data-label="Enabled"]').textContent(), 'No');
  await row(page, 'local-vllm').locator('[data-action="enable"]').click();
  await expectState(page, 'local-vllm', 'healthy');
  assert.equal(await row(page, 'local-vllm').locator('td[data-label="Enabled"]').textContent(), 'Yes');
  await row(page, 'local-vllm').locator('[data-action="disable"]').click();
  await expectState(page, 'local-vllm', 'disabled');
  assert.deepEqual(lastSent('PATCH', `/api/upstreams/${(await upstreamsNow(page)).find((u) => u.name === 'local-vllm').id}`), { enabled: false });
  ok(step);

  // --- A cooling upstream (its status as the server reports it after failures): the badge
  // says until when, the last error is shown under it and on hover.
  step = 'cooling badge';
  const until = Date.parse('2030-01-02T03:04:05Z');
  await page.route(/\/api\/upstreams$/, async (route) => {
    const response = await route.fetch();
    const json = await response.json();
    for (const u of json.items) {
      if (u.name === 'claude-main') u.status = { state: 'cooling', cooling_until: until, consecutive_failures: 3, last_error: 'upstream answered 529 overloaded_error' };
    }
    await route.fulfill({ response, json });
  });
  await page.click('#upstreams-refresh');
  await expectState(page, 'claude-main', 'cooling');
  const local = await page.evaluate((ms) => {
    const d = new Date(ms);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
  }, until);
  const badge = row(page, 'claude-main').locator('.badge');
  assert.equal(await badge.textContent(), `Cooling until ${local}`);
  assert.equal(await badge.getAttribute('title'), 'upstream answered 529 overloaded_error');
  assert.equal(await badge.evaluate((el) => getComputedStyle(el).backgroundColor), 'rgb(255, 241, 194)', 'yellow');
  assert.equal(await row(page, 'claude-main').locator('.last-error').textContent(), 'upstream answered 529 overloaded_error');
  assert.match(await row(page, 'claude-main').textContent(), /3 failures in a row/);
  assert.equal(await row(page, 'openai-main').locator('.badge').evaluate((el) => getComputedStyle(el).backgroundColor), 'rgb(220, 245, 227)', 'green');
  assert.equal(await row(page, 'local-vllm').locator('.badge').evaluate((el) => getComputedStyle(el).backgroundColor), 'rgb(232, 234, 238)', 'grey');
  await shot(page, 'upstreams.png');
  await page.unroute(/\/api\/upstreams$/);
  // A cooldown about to end: the page asks again once it has, by itself.
  let faked = 0;
  await page.route(/\/api\/upstreams$/, async (route) => {
    const response = await route.fetch();
    const json = await response.json();
    if (faked++ === 0) {
      const claude = json.items.find((u) => u.name === 'claude-main');
      claude.status = { state: 'cooling', cooling_until: Date.now() + 1500, consecutive_failures: 3, last_error: 'connect refused' };
    }
    await route.fulfill({ response, json });
  });
  await page.click('#upstreams-refresh');
  await page.waitForFunction(() => /connect refused/.test(document.querySelector('#upstreams-table tr[data-upstream-name="claude-main"]')?.textContent));
  await expectState(page, 'claude-main', 'healthy', /^Healthy$/);
  assert.equal(faked, 2, 'one reload after the cooldown');
  assert.equal(await row(page, 'claude-main').locator('.last-error').count(), 0);
  await page.unroute(/\/api\/upstreams$/);
  ok(step);

  // --- The key dialog binds a key to upstreams and routes; the key shows it.
  step = 'key binding';
  const ids = Object.fromEntries((await upstreamsNow(page)).map((u) => [u.name, u.id]));
  await page.goto(`${base}/#/keys`);
  await page.click('#create-key');
  const create = page.locator('#create-dialog');
  await create.waitFor();
  const choices = await create.locator('input[name="upstream_ids"]').evaluateAll((boxes) => boxes.map((b) => [b.value, b.checked]));
  assert.deepEqual(choices, [['0', false], [String(ids['openai-main']), false], [String(ids['claude-main']), false], [String(ids['local-vllm']), false]]);
  await create.locator('input[name="name"]').fill('claude code key');
  await create.locator(`input[name="upstream_ids"][value="${ids['claude-main']}"]`).check();
  await create.locator('input[name="permissions"][value="anthropic"]').check();
  await shot(page, 'create-bound.png');
  await create.locator('[data-action="create"]').click();
  await page.locator('#reveal-dialog').waitFor();
  const createdKey = lastSent('POST', '/api/api-keys');
  assert.deepEqual(createdKey.upstream_ids, [ids['claude-main']]);
  assert.deepEqual(createdKey.permissions, ['anthropic']);
  await page.locator('#reveal-dialog .dialog-foot button').click();
  await page.locator('#reveal-dialog').waitFor({ state: 'detached' });
  const keyRow = page.locator('#keys-table tr[data-key-name="claude code key"]');
  await keyRow.waitFor();
  const keyId = Number(await keyRow.getAttribute('data-key-id'));
  assert.equal(await keyRow.locator('[data-binding="upstreams"]').textContent(), 'Upstreams: claude-main');
  assert.equal(await keyRow.locator('[data-binding="permissions"]').textContent(), 'Routes: Anthropic Messages (/v1/messages)');
  // An unbound key shows nothing of it (it may use all).
  await page.click('#create-key');
  await create.locator('input[name="name"]').fill('free key');
  await create.locator('[data-action="create"]').click();
  await page.locator('#reveal-dialog').waitFor();
  assert.ok(!('upstream_ids' in lastSent('POST', '/api/api-keys')) && !('permissions' in lastSent('POST', '/api/api-keys')), 'none chosen, none sent');
  await page.locator('#reveal-dialog .dialog-foot button').click();
  await page.locator('#keys-table tr[data-key-name="free key"]').waitFor();
  assert.equal(await page.locator('#keys-table tr[data-key-name="free key"] .binding-summary').count(), 0);
  // Edit: the boxes show the binding; only a change is sent.
  await keyRow.locator('[data-action="edit"]').click();
  const edit = page.locator('#edit-dialog');
  await edit.waitFor();
  assert.ok(await edit.locator(`input[name="upstream_ids"][value="${ids['claude-main']}"]`).isChecked());
  assert.ok(await edit.locator('input[name="permissions"][value="anthropic"]').isChecked());
  assert.ok(!(await edit.locator('input[name="permissions"][value="openai"]').isChecked()));
  await edit.locator('input[name="upstream_ids"][value="0"]').check();
  await edit.locator('[data-action="save"]').click();
  await edit.waitFor({ state: 'detached' });
  assert.deepEqual(lastSent('PATCH', `/api/api-keys/${keyId}`), { upstream_ids: [0, ids['claude-main']] });
  await page.waitForFunction(() => /default, claude-main/.test(document.querySelector('#keys-table tr[data-key-name="claude code key"] [data-binding="upstreams"]')?.textContent));
  let key = await keyNow(page, keyId);
  assert.deepEqual(key.upstream_ids, [0, ids['claude-main']]);
  assert.deepEqual(key.permissions, ['anthropic']);
  // The key's own page says it too.
  await keyRow.locator('[data-action="stats"]').click();
  await page.waitForSelector('main .binding-summary');
  assert.match(await page.textContent('main .binding-summary'), /Upstreams: default, claude-main · Routes: Anthropic Messages/);
  ok(step);

  // --- Delete: a plain confirm; an upstream keys are bound to offers "unbind and delete".
  step = 'delete';
  await openUpstreams(page);
  assert.equal(await row(page, 'claude-main').locator('td[data-label="Keys bound"]').textContent(), '1');
  await row(page, 'claude-main').locator('[data-action="delete"]').click();
  let confirm = page.locator('dialog[open]');
  await confirm.waitFor();
  await confirm.locator('[data-action="confirm"]').click();
  await page.waitForFunction(() => document.querySelector('dialog[open]')?.textContent.includes('Unbind and delete'));
  confirm = page.locator('dialog[open]');
  assert.match(await confirm.textContent(), /Keys are bound to claude-main/);
  assert.match(await confirm.textContent(), /1 key\(s\) are bound to upstream `claude-main`/, 'the server says which keys');
  assert.match(await confirm.textContent(), /may use every upstream/);
  await shot(page, 'upstream-unbind.png');
  await confirm.locator('[data-action="confirm"]').click();
  await row(page, 'claude-main').waitFor({ state: 'detached' });
  key = await keyNow(page, keyId);
  assert.deepEqual(key.upstream_ids, [0], 'taken out of the key');
  await row(page, 'local-vllm').locator('[data-action="delete"]').click();
  confirm = page.locator('dialog[open]');
  await confirm.waitFor();
  assert.match(await confirm.textContent(), /Requests stop going to this upstream/);
  await confirm.locator('[data-action="confirm"]').click();
  await row(page, 'local-vllm').waitFor({ state: 'detached' });
  assert.deepEqual((await upstreamsNow(page)).map((u) => u.name), ['default', 'openai-main']);
  ok(step);

  // --- Chinese.
  step = 'Chinese';
  await page.selectOption('#lang-select', 'zh');
  await page.waitForFunction(() => document.querySelector('main h1')?.textContent === '上游服务');
  assert.equal(await page.textContent('#nav-upstreams'), '上游');
  assert.equal(await row(page, 'openai-main').locator('.badge').textContent(), '正常');
  assert.match(await row(page, 'default').textContent(), /只读/);
  await page.click('#add-upstream');
  await d.waitFor();
  assert.match(await d.textContent(), /添加上游[\s\S]*基础 URL/);
  await shot(page, 'upstream-add-zh.png');
  await page.keyboard.press('Escape');
  await d.waitFor({ state: 'detached' });
  await shot(page, 'upstreams-zh.png');
  await page.selectOption('#lang-select', 'en');
  await page.waitForFunction(() => document.querySelector('main h1')?.textContent === 'Upstreams');
  ok(step);

  // --- Phone width.
  step = 'phone width';
  await page.setViewportSize({ width: 390, height: 844 });
  await openUpstreams(page);
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), 'no sideways scrolling');
  await shot(page, 'upstreams-phone.png');
  await page.click('#add-upstream');
  await d.waitFor();
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), 'no sideways scrolling in the dialog');
  await page.keyboard.press('Escape');
  await page.setViewportSize({ width: 1360, height: 900 });
  ok(step);

  // --- The audit log page: the changes above, newest first, filtered by action and key; the
  // credentials typed are not in it.
  step = 'audit log';
  await page.click('#nav-audit');
  await page.waitForSelector('#audit-table');
  assert.equal(await page.getAttribute('#nav-audit', 'aria-current'), 'page');
  assert.equal(await page.textContent('main h1'), 'Audit log');
  const firstAction = await page.getAttribute('#audit-table tbody tr:first-child', 'data-action');
  assert.equal(firstAction, 'upstream.delete', 'newest first');
  await page.selectOption('#audit-action', 'upstream.create');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#audit-table tbody tr')];
    return rows.length > 0 && rows.every((r) => r.dataset.action === 'upstream.create');
  });
  assert.match(await page.textContent('#audit-table'), /openai-main \(upstream #\d+\)/);
  assert.match(await page.textContent('#audit-table tbody'), /console/);
  await page.selectOption('#audit-action', '');
  await page.fill('#audit-key', String(keyId));
  await page.dispatchEvent('#audit-key', 'change');
  await page.waitForFunction((name) => {
    const rows = [...document.querySelectorAll('#audit-table tbody tr')];
    return rows.length > 0 && rows.every((r) => r.textContent.includes(name));
  }, `#${keyId}`);
  assert.match(await page.textContent('#audit-table tbody'), /upstream_ids: \[[^\]]*\] → /, 'a change shows old → new');
  const audit = await page.evaluate(() => document.querySelector('main').outerHTML);
  for (const secret of [SECRET, CLAUDE_SECRET, NEW_SECRET]) assert.ok(!audit.includes(secret), 'no credential in the audit page');
  await page.selectOption('#lang-select', 'zh');
  await page.waitForFunction(() => document.querySelector('main h1')?.textContent === '审计日志');
  assert.equal(await page.textContent('#nav-audit'), '审计日志');
  await page.selectOption('#lang-select', 'en');
  await page.waitForFunction(() => document.querySelector('main h1')?.textContent === 'Audit log');
  await page.fill('#audit-key', '');
  await page.dispatchEvent('#audit-key', 'change');
  await shot(page, 'audit.png');
  ok(step);

  // --- The credentials typed never come back: not in the page, web storage or a URL.
  step = 'credentials write-only';
  await openUpstreams(page);
  const seen = await page.evaluate(() => document.documentElement.outerHTML + JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }));
  const answers = JSON.stringify(await upstreamsNow(page));
  for (const secret of [SECRET, CLAUDE_SECRET, NEW_SECRET]) {
    assert.ok(!seen.includes(secret), 'no credential in the page or storage');
    assert.ok(!answers.includes(secret), 'no credential in an answer');
    assert.ok(!requests.some((url) => url.includes(secret)), 'no credential in a URL');
  }
  assert.deepEqual(requests.filter((url) => new URL(url).origin !== origin), [], 'requests to other origins');
  ok(step);

  step = 'no console errors';
  assert.deepEqual(problems, []);
  ok(step);
  await context.close();
}

try {
  await main();
  console.log('upstreams: all checks passed');
} catch (err) {
  console.error(`FAILED at step "${step}": ${err.stack || err}`);
  if (problems.length) console.error(problems.join('\n'));
  process.exitCode = 1;
} finally {
  rmSync(profile, { recursive: true, force: true });
}
process.exit(process.exitCode || 0);
