// The key table: search, status and tag filters, sort and pagination (all by the server),
// and every per-key action.
import { api, query } from './api.js';
import { confirmDialog } from './dialog.js';
import { clear, debounce, fill, h, toast } from './dom.js';
import { dateTime, num, relative } from './format.js';
import { t } from './i18n.js';
import { batchRenewDialog, bindingSummary, createKeyDialog, editKeyDialog, renewDialog, revealKey, upstreamChoices } from './key_forms.js';

const view = { page: 1, pageSize: 20, search: '', status: '', tag: '', sort: null, dir: 1 };

/** The badge of a key: its status, yellow when expiring within 7 days, ∞ when it never expires. */
export function badge(key) {
  const kind = key.status === 'active' && key.expiring_soon ? 'expiring' : key.status;
  const label = kind === 'expiring' ? t('status.expiring') : t(`status.${key.status}`);
  const never = !key.expires_at && key.expiration_mode !== 'activation' && key.status === 'active';
  return h('span', { class: `badge badge-${kind}`, 'data-status': kind, title: label }, never ? `${label} ∞` : label);
}

/** The expiry cell: the date and how far it is (by the server's clock), or ∞. */
export function expiry(key) {
  if (key.expires_at) {
    return h('div', {}, h('div', { class: 'nowrap', text: dateTime(key.expires_at) }),
      h('div', { class: 'muted small', text: relative(key.expires_in_seconds ?? 0) }));
  }
  if (key.expiration_mode === 'activation' && !key.activated_at) {
    return h('span', { class: 'muted', text: t('expiry.after_first_use', { n: key.activation_period, unit: t(`unit.${key.activation_unit}`) }) });
  }
  return h('span', { class: 'nowrap', title: t('expiry.never') }, '∞ ', t('expiry.never'));
}

export function renderKeys(main) {
  clear(main);
  const search = h('input', { type: 'search', id: 'key-search', value: view.search, placeholder: t('hint.search') });
  const status = h('select', { id: 'key-status' },
    ['', 'active', 'pending', 'expired', 'disabled', 'revoked'].map((s) =>
      h('option', { value: s, selected: s === view.status, text: s ? t(`status.${s}`) : t('filter.all_statuses') })));
  const tag = h('input', { type: 'text', id: 'key-tag', value: view.tag, list: 'tag-list', placeholder: t('hint.tag') });
  const tagList = h('datalist', { id: 'tag-list' });
  const size = h('select', { id: 'key-page-size', 'aria-label': t('field.page_size') },
    [10, 20, 50, 100].map((n) => h('option', { value: n, selected: n === view.pageSize, text: t('field.per_page', { n }) })));
  const body = h('div', { 'aria-live': 'polite' });
  const reload = () => load(body, tagList);
  const refilter = () => { view.page = 1; reload(); };
  search.addEventListener('input', debounce(() => { view.search = search.value.trim(); refilter(); }, 300));
  status.addEventListener('change', () => { view.status = status.value; refilter(); });
  tag.addEventListener('change', () => { view.tag = tag.value.trim(); refilter(); });
  size.addEventListener('change', () => { view.pageSize = Number(size.value); refilter(); });

  const batch = h('button', { type: 'button', class: 'btn', id: 'batch-renew' }, t('action.batch_renew'));
  batch.addEventListener('click', async () => {
    batch.disabled = true;
    try {
      await batchRenewDialog(reload);
    } catch (err) {
      toast(err.message);
    } finally {
      batch.disabled = false;
    }
  });
  main.append(
    h('h1', { text: t('title.keys') }),
    h('div', { class: 'toolbar' },
      h('label', { class: 'field grow' }, h('span', { text: t('field.search') }), search),
      h('label', { class: 'field' }, h('span', { text: t('field.status') }), status),
      h('label', { class: 'field' }, h('span', { text: t('field.tag') }), tag, tagList),
      h('button', { type: 'button', class: 'btn btn-primary', id: 'create-key', onClick: () => createKeyDialog(reload) }, t('action.create_key')),
      batch),
    body,
    h('div', { class: 'pager' }, h('div', { class: 'inline', id: 'key-pager' }), size));
  reload();
}

// Each load is numbered: an answer that arrives after a newer load started (filters changed
// meanwhile) is dropped, so the view always shows the latest filters.
let loads = 0;

async function load(body, tagList) {
  const pager = document.getElementById('key-pager');
  const seq = ++loads;
  fill(body, h('p', { class: 'state state-loading', text: t('state.loading') }));
  let list;
  let upstreams;
  try {
    const order = view.sort ? { sort: view.sort, order: view.dir > 0 ? 'asc' : 'desc' } : {};
    // The upstreams name the ones a key is bound to (a failure there only leaves ids shown).
    [list, upstreams] = await Promise.all([
      api('GET', `/api/api-keys${query({ page: view.page, page_size: view.pageSize, search: view.search, status: view.status, tag: view.tag, ...order })}`),
      upstreamChoices().catch(() => null)]);
  } catch (err) {
    if (seq !== loads) return;
    fill(body, h('p', { class: 'state state-error', role: 'alert', text: t('state.error', { message: err.message }) }));
    return;
  }
  if (seq !== loads) return;
  const pages = Math.max(1, Math.ceil(list.total / list.page_size));
  if (view.page > pages && list.total > 0) {
    view.page = pages;
    load(body, tagList);
    return;
  }
  clear(tagList);
  [...new Set(list.items.flatMap((k) => k.tags || []))].sort().forEach((tag) => tagList.append(h('option', { value: tag })));
  clear(body);
  if (list.items.length === 0) {
    body.append(h('p', { class: 'state', id: 'keys-empty', text: view.search || view.status || view.tag ? t('empty.keys_filtered') : t('empty.keys') }));
  } else {
    body.append(table(list.items, upstreams, () => load(body, tagList)));
  }
  fill(pager, 
    h('span', { class: 'muted', id: 'key-count', text: t('pager.summary', { page: view.page, pages, total: list.total }) }),
    h('button', { type: 'button', class: 'btn', disabled: view.page <= 1, onClick: () => { view.page--; load(body, tagList); } }, t('pager.prev')),
    h('button', { type: 'button', class: 'btn', disabled: view.page >= pages, onClick: () => { view.page++; load(body, tagList); } }, t('pager.next')));
}

function sortHeader(column, label) {
  const active = view.sort === column;
  const th = h('th', { scope: 'col', 'aria-sort': active ? (view.dir > 0 ? 'ascending' : 'descending') : 'none' });
  const button = h('button', { type: 'button', class: 'sort', title: t('hint.sort') }, label, active ? (view.dir > 0 ? ' ▲' : ' ▼') : '');
  button.addEventListener('click', () => {
    if (view.sort === column) view.dir = -view.dir;
    else { view.sort = column; view.dir = 1; }
    const main = document.getElementById('main');
    renderKeys(main);
    main.querySelector(`th[data-col="${column}"] button`)?.focus();
  });
  th.dataset.col = column;
  th.append(button);
  return th;
}

function table(items, upstreams, reload) {
  const hasLimits = items.some((k) => 'token_limit' in k || 'daily_cost' in k);
  return h('div', { class: 'table-wrap' }, h('table', { class: 'cards-on-phone', id: 'keys-table' },
    h('thead', {}, h('tr', {},
      sortHeader('name', t('col.name')),
      h('th', { scope: 'col', text: t('col.key') }),
      h('th', { scope: 'col', text: t('col.status') }),
      sortHeader('expires_at', t('col.expires')),
      sortHeader('created_at', t('col.created')),
      sortHeader('usage_count', t('col.usage')),
      sortHeader('last_used_at', t('col.last_used')),
      h('th', { scope: 'col', text: t('col.tags') }),
      hasLimits && h('th', { scope: 'col', text: t('col.spend') }),
      h('th', { scope: 'col', text: t('col.actions') }))),
    h('tbody', {}, items.map((key) => row(key, upstreams, reload, hasLimits)))));
}

/** A key bound to some upstreams or routes says which (a key with neither may use all). */
const bound = (key) => (key.upstream_ids || []).length > 0 || (key.permissions || []).length > 0;

function row(key, upstreams, reload, hasLimits) {
  return h('tr', { 'data-key-id': key.id, 'data-key-name': key.name },
    h('td', { 'data-label': t('col.name') }, h('div', { class: 'key-name', text: key.name }),
      key.description && h('div', { class: 'muted small', text: key.description }),
      bound(key) && bindingSummary(key, upstreams)),
    h('td', { 'data-label': t('col.key') }, h('code', { text: key.key_preview })),
    h('td', { 'data-label': t('col.status') }, badge(key)),
    h('td', { 'data-label': t('col.expires') }, expiry(key)),
    h('td', { 'data-label': t('col.created'), class: 'nowrap', text: dateTime(key.created_at) }),
    h('td', { 'data-label': t('col.usage'), class: 'num', text: num(key.usage_count) }),
    h('td', { 'data-label': t('col.last_used'), class: 'nowrap', text: key.last_used_at ? dateTime(key.last_used_at) : t('misc.never_used') }),
    h('td', { 'data-label': t('col.tags') }, h('div', { class: 'tags' }, (key.tags || []).map((tag) => h('span', { class: 'tag', text: tag })))),
    hasLimits && h('td', { 'data-label': t('col.spend'), class: 'nowrap small' },
      'daily_cost' in key && h('div', { text: t('usage.today', { cost: key.daily_cost.toFixed(4) }) }),
      'weekly_cost' in key && h('div', { text: t('usage.week', { cost: key.weekly_cost.toFixed(4) }) })),
    h('td', { 'data-label': t('col.actions') }, actions(key, reload)));
}

function actions(key, reload) {
  const revoked = key.status === 'revoked';
  const button = (id, label, run, kind = '') => h('button', { type: 'button', class: `btn btn-small ${kind}`, 'data-action': id, 'aria-label': `${label}: ${key.name}`, onClick: run }, label);
  const post = async (path, body, message) => {
    try {
      const answer = await api('POST', path, body);
      if (message) toast(message);
      reload();
      return answer;
    } catch (err) {
      toast(err.message);
      throw err;
    }
  };
  return h('div', { class: 'actions' },
    h('a', { class: 'btn btn-small', href: `#/keys/${key.id}/stats`, 'data-action': 'stats' }, t('action.stats')),
    h('a', { class: 'btn btn-small', href: `#/keys/${key.id}/logs`, 'data-action': 'logs' }, t('action.logs')),
    button('edit', t('action.edit'), () => editKeyDialog(key, reload)),
    !revoked && button('renew', t('action.renew'), () => renewDialog(key, reload)),
    !revoked && (key.is_active
      ? button('disable', t('action.disable'), () => api('PATCH', `/api/api-keys/${key.id}`, { is_active: false }).then(() => { toast(t('msg.disabled')); reload(); }, (err) => toast(err.message)))
      : button('enable', t('action.enable'), () => api('PATCH', `/api/api-keys/${key.id}`, { is_active: true }).then(() => { toast(t('msg.enabled')); reload(); }, (err) => toast(err.message)))),
    !revoked && button('regenerate', t('action.regenerate'), () => {
      // How long the replaced key keeps working, so clients can be moved without downtime.
      const grace = h('select', { name: 'grace_hours', id: 'regenerate-grace' },
        [0, 1, 24, 168].map((hours) => h('option', { value: hours, text: t(`grace.${hours}`) })));
      return confirmDialog({
        title: t('title.regenerate', { name: key.name }),
        message: t('confirm.regenerate'),
        confirmLabel: t('action.regenerate'),
        extra: h('label', { class: 'field' }, h('span', { text: t('field.grace') }), grace),
        run: async () => {
          const hours = Number(grace.value);
          const answer = await api('POST', `/api/api-keys/${key.id}/regenerate`, hours ? { grace_hours: hours } : undefined);
          reload();
          setTimeout(() => revealKey(answer, t('title.key_regenerated')), 0);
        },
      });
    }),
    !revoked && button('revoke', t('action.revoke'), () => confirmDialog({
      title: t('title.revoke', { name: key.name }),
      message: t('confirm.revoke'),
      confirmLabel: t('action.revoke'),
      run: () => post(`/api/api-keys/${key.id}/revoke`, undefined, t('msg.revoked')),
    })),
    button('delete', t('action.delete'), () => confirmDialog({
      title: t('title.delete', { name: key.name }),
      message: t('confirm.delete'),
      confirmLabel: t('action.delete'),
      run: async () => {
        await api('DELETE', `/api/api-keys/${key.id}`);
        toast(t('msg.deleted'));
        reload();
      },
    }), 'btn-danger'));
}
