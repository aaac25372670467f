// The add and edit dialogs of an upstream. The credential is write-only: the edit dialog never
// shows it, and it is sent only when one is typed (or removed on purpose).
import { api } from './api.js';
import { openDialog } from './dialog.js';
import { h, toast } from './dom.js';
import { t } from './i18n.js';

export const KINDS = ['openai', 'anthropic'];
const AUTH_HEADERS = ['bearer', 'api-key', 'x-api-key'];
const DEFAULT_AUTH = { openai: 'bearer', anthropic: 'x-api-key' };

let uid = 0;

/** A refusal of one field, shown next to it like the server's 400s. */
function fieldError(field, message) {
  const err = new Error(`${field}: ${message}`);
  err.field = field;
  return err;
}

/** A labelled control; `control` is an input, select or textarea named `name`. */
function field(name, label, control, hint) {
  const id = `u-${name}-${++uid}`;
  control.id = id;
  control.name = name;
  const hintNode = hint === undefined ? null : h('p', { class: 'hint', id: `${id}-hint`, text: hint });
  if (hintNode) control.setAttribute('aria-describedby', hintNode.id);
  return { control, hintNode, node: h('label', { class: 'field', for: id }, h('span', { text: label }), control, hintNode) };
}

const select = (values, label, selected) => h('select', {},
  values.map((value) => h('option', { value, selected: value === selected, text: label(value) })));

/** "a, b" or one per line → ['a', 'b']. */
function list(text) {
  return text.split(/[,\n]/).map((v) => v.trim()).filter(Boolean);
}

/** Lines `left<sep>right` → {left: right}; a line without `sep` is refused as `field`. */
function pairs(text, sep, name, message) {
  const out = {};
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    const at = line.indexOf(sep);
    const left = at < 0 ? '' : line.slice(0, at).trim();
    const right = at < 0 ? '' : line.slice(at + sep.length).trim();
    if (!left || !right) throw fieldError(name, t(message, { n: i + 1 }));
    out[left] = right;
  });
  return out;
}

const mapText = (map, sep) => Object.entries(map || {}).map(([k, v]) => `${k}${sep}${v}`).join('\n');

/** A whole number from 0 (or 1) up, or null for an empty field when `optional`. */
function whole(input, name, { min = 0, optional = false } = {}) {
  const text = input.value.trim();
  if (text === '' && optional) return null;
  const n = Number(text);
  if (text === '' || !Number.isInteger(n) || n < min) throw fieldError(name, t('error.whole_number', { min }));
  return n;
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const sorted = (map) => Object.fromEntries(Object.entries(map).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));

/** The form of an upstream (`upstream`: the current one when editing). */
function upstreamForm(upstream) {
  const current = upstream || {};
  const kindNow = current.kind || 'openai';
  const name = field('name', t('field.name'), h('input', { type: 'text', required: true, autocomplete: 'off', value: current.name || '' }), t('hint.upstream_name'));
  const kind = field('kind', t('field.kind'), select(KINDS, (k) => t(`kind.${k}`), kindNow));
  const baseUrl = field('base_url', t('field.base_url'), h('input', { type: 'url', autocomplete: 'off', spellcheck: 'false', value: current.base_url || '' }), '');
  const apiKey = field('api_key', t('field.api_key'), h('input', { type: 'password', autocomplete: 'new-password', spellcheck: 'false', value: '' }),
    !upstream ? t('hint.api_key_new') : current.has_api_key ? t('hint.api_key_kept') : t('hint.api_key_none'));
  const removeKey = upstream && current.has_api_key
    ? h('input', { type: 'checkbox', name: 'remove_api_key' })
    : null;
  const authHeader = field('auth_header', t('field.auth_header'), select(AUTH_HEADERS, (a) => t(`auth.${a}`), current.auth_header || DEFAULT_AUTH[kindNow]));
  const models = field('models', t('field.models'), h('textarea', { rows: 3, spellcheck: 'false' }), t('hint.models'));
  models.control.value = (current.models || []).join('\n');
  const modelMap = field('model_map', t('field.model_map'), h('textarea', { rows: 3, spellcheck: 'false' }), t('hint.model_map'));
  modelMap.control.value = mapText(current.model_map, '=');
  const number = (value, min) => h('input', { type: 'number', min, step: 1, inputmode: 'numeric', value: value ?? '' });
  const priority = field('priority', t('field.priority'), number(current.priority ?? 0, 0), t('hint.priority'));
  const weight = field('weight', t('field.weight'), number(current.weight ?? 1, 0), t('hint.weight'));
  const timeout = field('timeout_seconds', t('field.timeout_seconds'), number(current.timeout_seconds, 1), t('hint.timeout_seconds'));
  timeout.control.placeholder = t('hint.server_default');
  const enabled = h('input', { type: 'checkbox', name: 'enabled', checked: upstream ? current.enabled : true });
  const streamUsage = field('stream_usage', t('field.stream_usage'), select(['inject', 'off'], (s) => t(`stream.${s}`), current.stream_usage || 'inject'));
  const headers = field('extra_headers', t('field.extra_headers'), h('textarea', { rows: 2, spellcheck: 'false' }), t('hint.extra_headers'));
  headers.control.value = mapText(current.extra_headers, ': ');

  // The base URL's example and the credential header follow the kind (a header chosen by hand
  // stays).
  let lastKind = kindNow;
  const followKind = () => {
    const next = kind.control.value;
    baseUrl.hintNode.textContent = t(`hint.base_url_${next}`);
    baseUrl.control.placeholder = next === 'anthropic' ? 'https://api.anthropic.com' : 'https://api.openai.com/v1';
    if (authHeader.control.value === DEFAULT_AUTH[lastKind]) authHeader.control.value = DEFAULT_AUTH[next];
    lastKind = next;
  };
  kind.control.addEventListener('change', followKind);
  followKind();
  if (removeKey) removeKey.addEventListener('change', () => { apiKey.control.disabled = removeKey.checked; });

  const node = h('div', { class: 'dialog-body-inner' },
    h('div', { class: 'grid2' }, name.node, kind.node),
    baseUrl.node,
    h('div', { class: 'grid2' }, h('div', {}, apiKey.node,
      removeKey && h('label', { class: 'check' }, removeKey, h('span', { text: t('field.remove_api_key') }))), authHeader.node),
    h('fieldset', {}, h('legend', { text: t('section.routing') }),
      h('div', { class: 'grid2' }, models.node, modelMap.node),
      h('div', { class: 'grid3' }, priority.node, weight.node, timeout.node),
      h('div', { class: 'grid2' },
        h('label', { class: 'check' }, enabled, h('span', { text: t('field.enabled') })),
        streamUsage.node)),
    headers.node);

  /** Every field as the API takes it. */
  function read() {
    const out = {
      name: name.control.value.trim(),
      kind: kind.control.value,
      base_url: baseUrl.control.value.trim(),
      auth_header: authHeader.control.value,
      models: list(models.control.value),
      model_map: sorted(pairs(modelMap.control.value, '=', 'model_map', 'error.model_map_line')),
      priority: whole(priority.control, 'priority'),
      weight: whole(weight.control, 'weight'),
      enabled: enabled.checked,
      timeout_seconds: whole(timeout.control, 'timeout_seconds', { min: 1, optional: true }),
      stream_usage: streamUsage.control.value,
      extra_headers: sorted(pairs(headers.control.value, ':', 'extra_headers', 'error.header_line')),
    };
    if (!out.name) throw fieldError('name', t('error.upstream_name'));
    if (!out.base_url) throw fieldError('base_url', t('error.base_url'));
    return out;
  }

  /** The new upstream's body: empty optional fields left out (the server's defaults). */
  function create() {
    const body = read();
    if (!body.models.length) delete body.models;
    if (!Object.keys(body.model_map).length) delete body.model_map;
    if (!Object.keys(body.extra_headers).length) delete body.extra_headers;
    if (body.timeout_seconds === null) delete body.timeout_seconds;
    if (apiKey.control.value.trim()) body.api_key = apiKey.control.value.trim();
    return body;
  }

  /** Only what changed; the credential only when one was typed (or its removal chosen). */
  function patch() {
    const body = read();
    const before = {
      name: current.name, kind: current.kind, base_url: current.base_url, auth_header: current.auth_header,
      models: current.models || [], model_map: sorted(current.model_map || {}), priority: current.priority,
      weight: current.weight, enabled: current.enabled, timeout_seconds: current.timeout_seconds ?? null,
      stream_usage: current.stream_usage, extra_headers: sorted(current.extra_headers || {}),
    };
    const out = {};
    for (const [key, value] of Object.entries(body)) if (!same(value, before[key])) out[key] = value;
    if (removeKey && removeKey.checked) out.api_key = null;
    else if (apiKey.control.value.trim()) out.api_key = apiKey.control.value.trim();
    return out;
  }

  return { node, create, patch, clearSecret: () => { apiKey.control.value = ''; } };
}

export function addUpstreamDialog(onDone) {
  const form = upstreamForm(null);
  openDialog({
    title: t('title.add_upstream'),
    id: 'upstream-dialog',
    body: form.node,
    onClose: form.clearSecret,
    actions: [{
      label: t('action.add'),
      id: 'create',
      run: async () => {
        const created = await api('POST', '/api/upstreams', form.create());
        toast(t('msg.upstream_added', { name: created.name }));
        onDone();
      },
    }],
  });
}

export function editUpstreamDialog(upstream, onDone) {
  const form = upstreamForm(upstream);
  openDialog({
    title: t('title.edit_upstream', { name: upstream.name }),
    id: 'upstream-dialog',
    body: form.node,
    onClose: form.clearSecret,
    actions: [{
      label: t('action.save'),
      id: 'save',
      run: async () => {
        const changes = form.patch();
        if (Object.keys(changes).length) await api('PATCH', `/api/upstreams/${upstream.id}`, changes);
        toast(t('msg.saved'));
        onDone();
      },
    }],
  });
}
