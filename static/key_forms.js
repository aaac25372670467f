// The key dialogs: create, edit (with the key's upstream binding and permissions), renew, batch
// renew, and the one-time reveal of a full key.
import { api, query } from './api.js';
import { openDialog } from './dialog.js';
import { h, toast } from './dom.js';
import { dateTime, localInputToUtc, utcToLocalInput } from './format.js';
import { t } from './i18n.js';

/** The per-key limits of SPEC §10: [field, kind]; `usd` takes decimals. */
export const LIMITS = [
  ['rate_limit_window', 'int'], ['rate_limit_requests', 'int'], ['rate_limit_tokens', 'int'],
  ['rate_limit_cost', 'usd'], ['concurrency_limit', 'int'], ['token_limit', 'int'],
  ['daily_cost_limit', 'usd'], ['weekly_cost_limit', 'usd'], ['total_cost_limit', 'usd'],
];
export const LISTS = ['allowed_models', 'allowed_clients', 'allowed_ips', 'allowed_endpoints', 'tags'];

let uid = 0;
const nextId = (name) => `f-${name}-${++uid}`;

function textField(name, label, { value = '', required = false, multiline = false, hint } = {}) {
  const id = nextId(name);
  const input = multiline
    ? h('textarea', { id, name, rows: 2 })
    : h('input', { id, name, type: 'text', required, autocomplete: 'off' });
  input.value = value || '';
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) input.setAttribute('aria-describedby', hintId);
  return { input, node: h('label', { class: 'field', for: id }, h('span', { text: label }), input, hint && h('p', { class: 'hint', id: hintId, text: hint })) };
}

function radios(name, choices, selected) {
  const inputs = {};
  const node = h('div', { class: 'choices' }, choices.map(([value, label]) => {
    const input = h('input', { type: 'radio', name, value, checked: value === selected });
    inputs[value] = input;
    return h('label', {}, input, label);
  }));
  return { node, inputs, value: () => Object.values(inputs).find((i) => i.checked)?.value };
}

/** Restriction lists as comma-separated text. `key`: the current values (edit). */
function listFields(key) {
  const fields = LISTS.map((name) => {
    const current = (key && key[name]) || [];
    const field = textField(name, t(`field.${name}`), { value: current.join(', '), hint: t(`hint.${name}`) });
    return { name, current, ...field };
  });
  const node = h('fieldset', {}, h('legend', { text: t('section.restrictions') }),
    h('div', { class: 'grid2' }, fields.map((f) => f.node)));
  function values() {
    const out = {};
    for (const f of fields) {
      const list = f.input.value.split(/[,\n]/).map((v) => v.trim()).filter(Boolean);
      if (key ? list.join('\n') !== f.current.join('\n') : list.length > 0) out[f.name] = list;
    }
    return out;
  }
  return { node, values };
}

/** The configured upstreams (with the built-in `default`), or null where the server has none. */
export async function upstreamChoices() {
  try {
    return (await api('GET', '/api/upstreams')).items;
  } catch (err) {
    if (err.status === 404) return null;
    throw err;
  }
}

const ROUTE_KINDS = ['openai', 'anthropic'];

/**
 * Which upstreams the key may be relayed to (`upstream_ids`) and which routes it may use
 * (`permissions`): checkboxes, none checked = all. Sent only when chosen (create) or changed
 * (edit). `upstreams`: from `upstreamChoices()`; null: the section is left out.
 */
function bindingFields(key, upstreams) {
  if (!upstreams) return { node: null, values: () => ({}) };
  const boundIds = (key && key.upstream_ids) || [];
  const allowed = (key && key.permissions) || [];
  const box = (name, value, checked, label, extra) => {
    const input = h('input', { type: 'checkbox', name, value: String(value), checked });
    return { input, node: h('label', {}, input, h('span', { text: label }), extra && h('span', { class: 'muted small', text: extra })) };
  };
  // A bound id the list does not have (deleted meanwhile) is kept, shown by its number.
  const known = new Set(upstreams.map((u) => u.id));
  const ups = [...upstreams.map((u) => box('upstream_ids', u.id, boundIds.includes(u.id), u.name, u.builtin ? t('binding.builtin') : t(`kind.${u.kind}`))),
    ...boundIds.filter((id) => !known.has(id)).map((id) => box('upstream_ids', id, true, `#${id}`))];
  const kinds = ROUTE_KINDS.map((kind) => box('permissions', kind, allowed.includes(kind), t(`permission.${kind}`)));
  const node = h('fieldset', { class: 'binding' }, h('legend', { text: t('section.binding') }),
    h('div', { class: 'field', 'data-field': 'upstream_ids' }, h('span', { text: t('field.upstream_ids') }),
      h('div', { class: 'choices' }, ups.map((b) => b.node)), h('p', { class: 'hint', text: t('hint.upstream_ids') })),
    h('div', { class: 'field', 'data-field': 'permissions' }, h('span', { text: t('field.permissions') }),
      h('div', { class: 'choices' }, kinds.map((b) => b.node)), h('p', { class: 'hint', text: t('hint.permissions') })));
  function values() {
    const ids = ups.filter((b) => b.input.checked).map((b) => Number(b.input.value)).sort((a, b) => a - b);
    const perms = kinds.filter((b) => b.input.checked).map((b) => b.input.value);
    const out = {};
    const before = [...boundIds].sort((a, b) => a - b);
    if (key ? ids.join() !== before.join() : ids.length > 0) out.upstream_ids = ids;
    if (key ? perms.join() !== ROUTE_KINDS.filter((k) => allowed.includes(k)).join() : perms.length > 0) out.permissions = perms;
    return out;
  }
  return { node, values };
}

/** What a key is bound to, in words: "Upstreams: a, b · Routes: Anthropic Messages". */
export function bindingSummary(key, upstreams) {
  if (!('upstream_ids' in key) && !('permissions' in key)) return null;
  const names = new Map((upstreams || []).map((u) => [u.id, u.name]));
  const ids = key.upstream_ids || [];
  const perms = key.permissions || [];
  return h('div', { class: 'muted small binding-summary' },
    h('span', { 'data-binding': 'upstreams' }, t('binding.upstreams'), ': ',
      ids.length ? ids.map((id) => names.get(id) ?? `#${id}`).join(', ') : t('binding.all_upstreams')),
    ' · ',
    h('span', { 'data-binding': 'permissions' }, t('binding.permissions'), ': ',
      perms.length ? perms.map((p) => t(`permission.${p}`)).join(', ') : t('binding.all_routes')));
}

/**
 * The limits. A field is sent only when the user filled it in (or, editing a key that has
 * it, changed it): a server without per-key limits refuses unknown fields.
 */
function limitFields(key) {
  const fields = LIMITS.map(([name, kind]) => {
    const id = nextId(name);
    const has = key && Object.prototype.hasOwnProperty.call(key, name);
    const original = has && key[name] !== null && key[name] !== undefined ? String(key[name]) : '';
    const input = h('input', { id, name, type: 'number', min: 0, step: kind === 'usd' ? '0.01' : '1', inputmode: kind === 'usd' ? 'decimal' : 'numeric', placeholder: t('hint.no_limit') });
    input.value = original === '0' ? '' : original;
    return { name, kind, input, has, original: input.value, node: h('label', { class: 'field', for: id }, h('span', { text: t(`field.${name}`) }), input) };
  });
  const node = h('fieldset', {}, h('legend', { text: t('section.limits') }),
    h('p', { class: 'hint', text: t('hint.limits') }),
    h('div', { class: 'grid3' }, fields.map((f) => f.node)));
  function values() {
    const out = {};
    for (const f of fields) {
      const text = f.input.value.trim();
      if (text === f.original) continue;
      if (text === '') {
        if (f.has) out[f.name] = 0;
        continue;
      }
      const value = Number(text);
      if (!Number.isFinite(value) || value < 0 || (f.kind === 'int' && !Number.isInteger(value))) {
        throw new Error(t('error.limit_number', { field: t(`field.${f.name}`) }));
      }
      out[f.name] = value;
    }
    return out;
  }
  return { node, values };
}

/** The expiry choices of the create dialog, and the API fields of the chosen one. */
function expiryChoices() {
  const choice = radios('expiry', [
    ['never', t('expiry.never')], ['1h', t('expiry.1h')], ['1d', t('expiry.1d')],
    ['7d', t('expiry.days', { n: 7 })], ['30d', t('expiry.days', { n: 30 })], ['90d', t('expiry.days', { n: 90 })],
    ['180d', t('expiry.days', { n: 180 })], ['365d', t('expiry.days', { n: 365 })],
    ['custom', t('expiry.custom')], ['activation', t('expiry.activation')],
  ], '30d');
  const customId = nextId('expires_at');
  const custom = h('input', { id: customId, type: 'datetime-local', name: 'expires_at' });
  const customBox = h('label', { class: 'field', for: customId, hidden: true }, h('span', { text: t('field.expires_at') }), custom);
  const periodId = nextId('activation_period');
  const period = h('input', { id: periodId, type: 'number', min: 1, step: 1, value: '30', name: 'activation_period' });
  const unit = h('select', { name: 'activation_unit', 'aria-label': t('field.activation_unit') },
    h('option', { value: 'days', text: t('unit.days') }), h('option', { value: 'hours', text: t('unit.hours') }));
  const activationBox = h('div', { hidden: true },
    h('label', { class: 'field', for: periodId }, h('span', { text: t('field.activation_period') }),
      h('div', { class: 'inline' }, period, unit)),
    h('p', { class: 'hint', text: t('hint.activation') }));
  const update = () => {
    customBox.hidden = choice.value() !== 'custom';
    activationBox.hidden = choice.value() !== 'activation';
  };
  Object.values(choice.inputs).forEach((i) => i.addEventListener('change', update));
  const node = h('fieldset', {}, h('legend', { text: t('field.expiry') }), choice.node, customBox, activationBox);
  function values() {
    const value = choice.value();
    if (value === 'never') return { never: true };
    if (value === '1h') return { expires_hours: 1 };
    if (value === 'custom') {
      const at = localInputToUtc(custom.value);
      if (!at) throw new Error(t('error.pick_date'));
      return { expires_at: at };
    }
    if (value === 'activation') {
      const n = Number(period.value);
      if (!Number.isInteger(n) || n < 1) throw new Error(t('error.activation_period'));
      return { expiration_mode: 'activation', activation_period: n, activation_unit: unit.value };
    }
    return { expires_days: Number(value.replace('d', '')) };
  }
  return { node, values };
}

/** Shows a full key once, with a copy button; closing the dialog loses it. */
export function revealKey(key, title) {
  const input = h('input', { type: 'text', readonly: true, value: key.key, 'aria-label': t('field.full_key'), id: 'revealed-key', spellcheck: 'false' });
  const copy = h('button', { type: 'button', class: 'btn btn-primary', id: 'copy-key' }, t('action.copy'));
  copy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(input.value);
    } catch {
      input.select();
      document.execCommand('copy');
    }
    copy.textContent = t('action.copied');
    toast(t('msg.copied'));
  });
  input.addEventListener('focus', () => input.select());
  openDialog({
    title,
    id: 'reveal-dialog',
    closeLabel: t('action.saved_it'),
    body: h('div', {},
      h('p', { class: 'alert alert-warn', role: 'note', text: t('msg.only_once') }),
      h('p', {}, h('strong', { text: key.name })),
      h('div', { class: 'reveal' }, input, copy),
      h('p', { class: 'hint', text: t('hint.use_key') })),
    onClose: () => { input.value = ''; },
  });
}

export async function createKeyDialog(onDone) {
  let upstreams;
  try {
    upstreams = await upstreamChoices();
  } catch (err) {
    toast(err.message);
    return;
  }
  const binding = bindingFields(null, upstreams);
  const name = textField('name', t('field.name'), { required: true });
  const description = textField('description', t('field.description'), { multiline: true });
  const expiry = expiryChoices();
  const lists = listFields(null);
  const limits = limitFields(null);
  openDialog({
    title: t('title.create_key'),
    id: 'create-dialog',
    body: h('div', { class: 'dialog-body-inner' }, name.node, description.node, expiry.node, lists.node, binding.node, limits.node),
    actions: [{
      label: t('action.create'),
      id: 'create',
      run: async () => {
        if (!name.input.value.trim()) {
          name.input.focus();
          throw new Error(t('error.name_required'));
        }
        const body = { name: name.input.value.trim(), ...expiry.values(), ...lists.values(), ...binding.values(), ...limits.values() };
        if (description.input.value.trim()) body.description = description.input.value.trim();
        const key = await api('POST', '/api/api-keys', body);
        onDone();
        setTimeout(() => revealKey(key, t('title.key_created')), 0);
      },
    }],
  });
}

export async function editKeyDialog(key, onDone) {
  let upstreams;
  try {
    upstreams = await upstreamChoices();
  } catch (err) {
    toast(err.message);
    return;
  }
  const binding = bindingFields(key, upstreams);
  const name = textField('name', t('field.name'), { value: key.name, required: true });
  const description = textField('description', t('field.description'), { value: key.description || '', multiline: true });
  const expiry = radios('edit-expiry', [
    ['keep', t('expiry.keep', { when: key.expires_at ? dateTime(key.expires_at) : t('expiry.never') })],
    ['never', t('expiry.never')], ['custom', t('expiry.custom')],
  ], 'keep');
  const customId = nextId('expires_at');
  const custom = h('input', { id: customId, type: 'datetime-local', value: utcToLocalInput(key.expires_at) });
  const customBox = h('label', { class: 'field', for: customId, hidden: true }, h('span', { text: t('field.expires_at') }), custom);
  Object.values(expiry.inputs).forEach((i) => i.addEventListener('change', () => { customBox.hidden = expiry.value() !== 'custom'; }));
  const lists = listFields(key);
  const limits = limitFields(key);
  openDialog({
    title: t('title.edit_key', { name: key.name }),
    id: 'edit-dialog',
    body: h('div', { class: 'dialog-body-inner' }, name.node, description.node,
      h('fieldset', {}, h('legend', { text: t('field.expiry') }), expiry.node, customBox),
      lists.node, binding.node, limits.node),
    actions: [{
      label: t('action.save'),
      id: 'save',
      run: async () => {
        const patch = { ...lists.values(), ...binding.values(), ...limits.values() };
        if (name.input.value.trim() !== key.name) patch.name = name.input.value.trim();
        const desc = description.input.value.trim();
        if (desc !== (key.description || '')) patch.description = desc || null;
        if (expiry.value() === 'never') patch.expires_at = null;
        if (expiry.value() === 'custom') {
          const at = localInputToUtc(custom.value);
          if (!at) throw new Error(t('error.pick_date'));
          patch.expires_at = at;
        }
        await api('PATCH', `/api/api-keys/${key.id}`, patch);
        toast(t('msg.saved'));
        onDone();
      },
    }],
  });
}

export function renewDialog(key, onDone) {
  const choice = radios('renew', [
    ['7', t('renew.days', { n: 7 })], ['30', t('renew.days', { n: 30 })], ['90', t('renew.days', { n: 90 })],
    ['180', t('renew.days', { n: 180 })], ['365', t('renew.days', { n: 365 })],
    ['custom', t('expiry.custom')], ['never', t('expiry.never')],
  ], '30');
  const customId = nextId('renew-at');
  const custom = h('input', { id: customId, type: 'datetime-local' });
  const customBox = h('label', { class: 'field', for: customId, hidden: true }, h('span', { text: t('field.expires_at') }), custom);
  Object.values(choice.inputs).forEach((i) => i.addEventListener('change', () => { customBox.hidden = choice.value() !== 'custom'; }));
  openDialog({
    title: t('title.renew_key', { name: key.name }),
    id: 'renew-dialog',
    body: h('div', {},
      h('p', { class: 'hint', text: t('hint.renew') }),
      h('fieldset', {}, h('legend', { text: t('field.new_expiry') }), choice.node, customBox)),
    actions: [{
      label: t('action.renew'),
      id: 'renew',
      run: async () => {
        const value = choice.value();
        let body;
        if (value === 'never') body = { never: true };
        else if (value === 'custom') {
          const at = localInputToUtc(custom.value);
          if (!at) throw new Error(t('error.pick_date'));
          body = { expires_at: at };
        } else body = { days: Number(value) };
        await api('POST', `/api/api-keys/${key.id}/renew`, body);
        toast(t('msg.renewed'));
        onDone();
      },
    }],
  });
}

/** Every key expiring within 7 days (all pages of the key list). */
async function expiringKeys() {
  const found = [];
  for (let page = 1; page <= 50; page++) {
    const list = await api('GET', `/api/api-keys${query({ status: 'active', page, page_size: 200 })}`);
    found.push(...list.items.filter((k) => k.expiring_soon));
    if (page * list.page_size >= list.total) break;
  }
  return found;
}

export async function batchRenewDialog(onDone) {
  const keys = await expiringKeys();
  const boxes = keys.map((key) => ({ key, input: h('input', { type: 'checkbox', checked: true, value: String(key.id) }) }));
  const all = h('input', { type: 'checkbox', checked: true, id: 'batch-all' });
  all.addEventListener('change', () => boxes.forEach((b) => { b.input.checked = all.checked; }));
  const extend = radios('extend', [['30', t('renew.plus_days', { n: 30 })], ['90', t('renew.plus_days', { n: 90 })]], '30');
  const body = keys.length === 0
    ? h('p', { class: 'state', text: t('empty.expiring') })
    : h('div', {},
      h('p', { class: 'hint', text: t('hint.batch_renew') }),
      h('fieldset', {}, h('legend', { text: t('field.extend_by') }), extend.node),
      h('fieldset', {}, h('legend', { text: t('field.keys') }),
        h('label', { class: 'field' }, h('span', { class: 'inline' }, all, t('field.select_all'))),
        h('div', { class: 'check-list' }, boxes.map(({ key, input }) =>
          h('label', {}, input, h('span', { text: key.name }), h('span', { class: 'muted small', text: dateTime(key.expires_at) }))))));
  openDialog({
    title: t('title.batch_renew'),
    id: 'batch-dialog',
    body,
    actions: keys.length === 0 ? [] : [{
      label: t('action.renew_selected'),
      id: 'batch-renew',
      run: async () => {
        const chosen = boxes.filter((b) => b.input.checked).map((b) => b.key.id);
        if (chosen.length === 0) throw new Error(t('error.none_chosen'));
        const request = { within_days: 7, extend_days: Number(extend.value()) };
        if (chosen.length < boxes.length) request.ids = chosen;
        const result = await api('POST', '/api/api-keys/renew-expiring', request);
        toast(t('msg.batch_renewed', { n: result.renewed.length }));
        onDone();
      },
    }],
  });
}
