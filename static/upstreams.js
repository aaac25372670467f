// The upstreams the relay routes over (SPEC §12): the built-in `default` and the configured
// ones with their live status; add, edit, enable or disable, delete.
import { api } from './api.js';
import { confirmDialog } from './dialog.js';
import { fill, h, toast } from './dom.js';
import { clock, num } from './format.js';
import { t } from './i18n.js';
import { addUpstreamDialog, editUpstreamDialog } from './upstream_forms.js';

/** The status badge: healthy (green), cooling until HH:MM:SS (yellow), disabled (grey). */
export function upstreamBadge(status) {
  const state = ['healthy', 'cooling', 'disabled'].includes(status?.state) ? status.state : 'healthy';
  const label = state === 'cooling' ? t('upstream.cooling_until', { time: clock(status.cooling_until) }) : t(`upstream.${state}`);
  const kind = { healthy: 'active', cooling: 'expiring', disabled: 'disabled' }[state];
  return h('span', { class: `badge badge-${kind}`, 'data-state': state, title: status?.last_error || label }, label);
}

/** The badge with the failures in a row and the last error (redacted by the server) under it. */
function statusCell(status) {
  return h('div', { class: 'status-cell' }, upstreamBadge(status),
    status?.consecutive_failures > 0 && h('div', { class: 'muted small', text: t('upstream.failures', { n: status.consecutive_failures }) }),
    status?.last_error && h('div', { class: 'small error-text last-error', text: status.last_error }));
}

export async function renderUpstreams(main) {
  const body = h('div', { 'aria-live': 'polite' });
  const reload = () => load(body);
  fill(main,
    h('h1', { text: t('title.upstreams') }),
    h('p', { class: 'hint page-hint', text: t('hint.upstreams') }),
    h('div', { class: 'toolbar' },
      h('button', { type: 'button', class: 'btn btn-primary', id: 'add-upstream', onClick: () => addUpstreamDialog(reload) }, t('action.add_upstream')),
      h('button', { type: 'button', class: 'btn', id: 'upstreams-refresh', onClick: reload }, t('action.refresh'))),
    body);
  await load(body);
}

let loads = 0;

async function load(body) {
  const seq = ++loads;
  if (!body.firstChild) fill(body, h('p', { class: 'state state-loading', text: t('state.loading') }));
  let list;
  try {
    list = await api('GET', '/api/upstreams');
  } catch (err) {
    if (seq !== loads) return;
    fill(body, h('p', { class: 'state state-error', role: 'alert', text: t('state.error', { message: err.message }) }));
    return;
  }
  if (seq !== loads) return;
  const configured = list.items.filter((u) => !u.builtin);
  fill(body, table(list.items, () => load(body)),
    configured.length === 0 && h('p', { class: 'state', id: 'upstreams-empty', text: t('empty.upstreams') }));
  // A cooling badge is shown again once its cooldown ends (at most a minute from now), while
  // this view is on screen and nothing newer has loaded.
  const ends = list.items.map((u) => u.status?.state === 'cooling' && new Date(u.status.cooling_until).getTime()).filter(Boolean);
  if (ends.length) {
    const wait = Math.min(Math.max(Math.min(...ends) - Date.now(), 0) + 1000, 60_000);
    setTimeout(() => { if (seq === loads && body.isConnected) load(body); }, wait);
  }
}

function table(items, reload) {
  const columns = ['col.name', 'col.kind', 'col.base_url', 'col.models', 'col.priority_weight', 'col.enabled', 'col.status', 'col.bound_keys', 'col.actions'];
  return h('div', { class: 'table-wrap' }, h('table', { class: 'cards-on-phone', id: 'upstreams-table' },
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', text: t(c) })))),
    h('tbody', {}, items.map((u) => row(u, reload)))));
}

function row(u, reload) {
  const cell = (label, ...children) => h('td', { 'data-label': t(label), class: { 'col.base_url': 'url-cell', 'col.models': 'models-cell' }[label] }, ...children);
  const mapped = Object.entries(u.model_map || {});
  return h('tr', { 'data-upstream-id': u.id, 'data-upstream-name': u.name, 'data-state': u.status?.state, class: u.builtin ? 'builtin' : null },
    cell('col.name', h('div', { class: 'key-name', text: u.name }),
      u.builtin && h('div', { class: 'muted small builtin-note', text: t('upstream.builtin_note') })),
    cell('col.kind', h('span', { class: 'nowrap', text: t(`kind.${u.kind}`) })),
    cell('col.base_url', h('code', { class: 'url', text: u.base_url }),
      h('div', { class: 'muted small credential' }, u.has_api_key
        ? t('upstream.credential_set', { preview: u.api_key_preview ? ` ${u.api_key_preview}` : '' })
        : t('upstream.no_credential')),
      h('div', { class: 'muted small', text: t(`auth.${u.auth_header}`) })),
    cell('col.models',
      u.models.length === 0
        ? h('span', { class: 'muted', text: t('upstream.any_model') })
        : h('div', { class: 'tags' }, u.models.map((m) => h('span', { class: 'tag', text: m }))),
      mapped.length > 0 && h('div', { class: 'muted small', title: mapped.map(([a, b]) => `${a} → ${b}`).join('\n'), text: t('upstream.mapped', { n: mapped.length }) })),
    cell('col.priority_weight', h('span', { class: 'nowrap', text: u.builtin ? t('upstream.last') : `${num(u.priority)} / ${num(u.weight)}` })),
    cell('col.enabled', h('span', { text: u.enabled ? t('misc.yes') : t('misc.no') })),
    cell('col.status', statusCell(u.status)),
    cell('col.bound_keys', h('span', { class: 'num', text: num(u.bound_keys) })),
    cell('col.actions', u.builtin
      ? h('div', { class: 'actions' }, testButton(u), h('span', { class: 'muted small', text: t('upstream.read_only') }))
      : actions(u, reload)));
}

/** Asks the upstream for its model list with its credential (POST /api/upstreams/{id}/test). */
function testButton(u) {
  const label = t('action.test');
  const run = async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    try {
      const probe = await api('POST', `/api/upstreams/${u.id}/test`);
      toast(probe.ok
        ? t('msg.upstream_test_ok', { name: u.name, status: probe.status, ms: num(probe.latency_ms), n: probe.models ?? '?' })
        : t('msg.upstream_test_failed', { name: u.name, ms: num(probe.latency_ms), error: probe.error || '' }));
    } catch (err) {
      toast(err.message);
    } finally {
      button.disabled = false;
    }
  };
  return h('button', { type: 'button', class: 'btn btn-small', 'data-action': 'test', 'aria-label': `${label}: ${u.name}`, onClick: run }, label);
}

function actions(u, reload) {
  const button = (id, label, run, kind = '') => h('button', { type: 'button', class: `btn btn-small ${kind}`, 'data-action': id, 'aria-label': `${label}: ${u.name}`, onClick: run }, label);
  const toggle = async (enabled) => {
    try {
      await api('PATCH', `/api/upstreams/${u.id}`, { enabled });
      toast(t(enabled ? 'msg.upstream_enabled' : 'msg.upstream_disabled', { name: u.name }));
    } catch (err) {
      toast(err.message);
    }
    reload();
  };
  return h('div', { class: 'actions' },
    testButton(u),
    button('edit', t('action.edit'), () => editUpstreamDialog(u, reload)),
    u.enabled
      ? button('disable', t('action.disable'), () => toggle(false))
      : button('enable', t('action.enable'), () => toggle(true)),
    button('delete', t('action.delete'), () => remove(u, reload), 'btn-danger'));
}

/** Delete after a confirm; keys bound to it (409) are offered "unbind and delete". */
async function remove(u, reload) {
  let conflict = null;
  await confirmDialog({
    title: t('title.delete', { name: u.name }),
    message: t('confirm.delete_upstream'),
    confirmLabel: t('action.delete'),
    run: async () => {
      try {
        await api('DELETE', `/api/upstreams/${u.id}`);
        toast(t('msg.upstream_deleted', { name: u.name }));
      } catch (err) {
        if (err.status !== 409) throw err;
        conflict = err;
      }
      reload();
    },
  });
  if (!conflict) return;
  await confirmDialog({
    title: t('title.unbind_upstream', { name: u.name }),
    message: t('confirm.unbind_upstream'),
    extra: h('p', { class: 'alert alert-warn', text: conflict.message }),
    confirmLabel: t('action.unbind_delete'),
    run: async () => {
      const deleted = await api('DELETE', `/api/upstreams/${u.id}?force=true`);
      toast(t('msg.upstream_unbound', { name: u.name, n: deleted.unbound_key_ids.length }));
      reload();
    },
  });
}
