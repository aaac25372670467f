// Every visible string, in English and Simplified Chinese; the language comes from the
// browser and can be switched (the choice is kept in localStorage: it is not a secret).

const en = {
  'app.title': 'keygate console',
  'nav.keys': 'Keys', 'nav.logs': 'Logs', 'nav.main': 'Main', 'nav.language': 'Language',
  'nav.skip': 'Skip to content', 'nav.back_to_keys': 'All keys',
  'title.login': 'Log in', 'title.keys': 'API keys', 'title.logs': 'Call logs',
  'title.key_logs': 'Call logs of {name}', 'title.stats': 'Stats of {name}',
  'title.create_key': 'Create an API key', 'title.edit_key': 'Edit {name}', 'title.renew_key': 'Renew {name}',
  'title.batch_renew': 'Renew keys expiring within 7 days', 'title.key_created': 'Key created',
  'title.key_regenerated': 'New key generated', 'title.regenerate': 'Regenerate {name}?',
  'title.revoke': 'Revoke {name}?', 'title.delete': 'Delete {name}?',
  'action.login': 'Log in', 'action.logout': 'Log out', 'action.cancel': 'Cancel', 'action.close': 'Close',
  'action.create_key': 'Create key', 'action.create': 'Create', 'action.save': 'Save',
  'action.batch_renew': 'Renew expiring…', 'action.renew_selected': 'Renew chosen keys',
  'action.stats': 'Stats', 'action.logs': 'Logs', 'action.edit': 'Edit', 'action.renew': 'Renew',
  'action.enable': 'Enable', 'action.disable': 'Disable', 'action.regenerate': 'Regenerate',
  'action.revoke': 'Revoke', 'action.delete': 'Delete', 'action.copy': 'Copy', 'action.copied': 'Copied ✓',
  'action.saved_it': 'I have saved it', 'action.refresh': 'Refresh',
  'field.admin_token': 'Admin token', 'field.name': 'Name (required)', 'field.description': 'Description',
  'field.expiry': 'Expiry', 'field.expires_at': 'Expires at (your local time)', 'field.new_expiry': 'New expiry',
  'field.activation_period': 'Valid for, counted from the first use', 'field.activation_unit': 'Unit',
  'field.search': 'Search', 'field.status': 'Status', 'field.tag': 'Tag', 'field.key': 'Key', 'field.keys': 'Keys',
  'field.model': 'Model', 'field.page_size': 'Rows per page', 'field.per_page': '{n} per page',
  'field.period': 'Period', 'field.extend_by': 'Extend by', 'field.select_all': 'All of them',
  'field.full_key': 'The full API key',
  'field.allowed_models': 'Allowed models', 'field.allowed_clients': 'Allowed clients (User-Agent)',
  'field.allowed_ips': 'Allowed IPs or CIDRs', 'field.allowed_endpoints': 'Allowed endpoints', 'field.tags': 'Tags',
  'field.rate_limit_window': 'Rate window (minutes)', 'field.rate_limit_requests': 'Requests per window',
  'field.rate_limit_tokens': 'Tokens per window', 'field.rate_limit_cost': 'Cost per window (USD)',
  'field.concurrency_limit': 'Concurrent requests', 'field.token_limit': 'Lifetime tokens',
  'field.daily_cost_limit': 'Daily cost (USD)', 'field.weekly_cost_limit': 'Weekly cost (USD)',
  'field.total_cost_limit': 'Total cost (USD)',
  'section.restrictions': 'Restrictions (empty: no restriction)', 'section.limits': 'Limits',
  'hint.login': 'Enter the admin token (KEYGATE_ADMIN_TOKEN). The session is a cookie this page cannot read; it ends after 12 hours or when you log out.',
  'hint.search': 'Name or description', 'hint.tag': 'Exact tag', 'hint.model': 'Exact model name',
  'hint.allowed_models': 'Comma-separated; exact names or prefix*', 'hint.allowed_clients': 'Comma-separated; exact or prefix*',
  'hint.allowed_ips': 'Comma-separated, e.g. 10.0.0.0/8', 'hint.allowed_endpoints': 'Comma-separated, e.g. /v1/chat/completions',
  'hint.tags': 'Comma-separated labels',
  'hint.limits': 'Leave a field empty for no limit. Limits take effect on the next request.',
  'hint.no_limit': 'no limit',
  'hint.activation': 'The key is pending until its first use; it then expires after this period.',
  'hint.renew': 'Renewing also re-enables a disabled or expired key.',
  'hint.batch_renew': 'Each chosen key gets this many more days on top of its current expiry.',
  'hint.use_key': 'Use it as Authorization: Bearer <key> or X-API-Key: <key> against /v1.',
  'hint.sort': 'Sort all keys by this column (again: reverse)',
  'expiry.never': 'Never expires', 'expiry.1h': '1 hour', 'expiry.1d': '1 day', 'expiry.days': '{n} days',
  'expiry.custom': 'Choose a date and time', 'expiry.activation': 'From the first use',
  'expiry.keep': 'Keep ({when})', 'expiry.after_first_use': '{n} {unit} after first use',
  'renew.days': '{n} days from now', 'renew.plus_days': '+{n} days',
  'unit.days': 'days', 'unit.hours': 'hours', 'unit.ms': 'ms',
  'status.active': 'Active', 'status.pending': 'Pending', 'status.expired': 'Expired',
  'status.disabled': 'Disabled', 'status.revoked': 'Revoked', 'status.expiring': 'Expiring soon',
  'filter.all_statuses': 'All', 'filter.all_keys': 'All keys',
  'col.name': 'Name', 'col.key': 'Key', 'col.status': 'Status', 'col.expires': 'Expires', 'col.created': 'Created',
  'col.usage': 'Calls', 'col.last_used': 'Last used', 'col.tags': 'Tags', 'col.actions': 'Actions', 'col.spend': 'Spend',
  'col.time': 'Time', 'col.model': 'Model', 'col.http': 'HTTP', 'col.response_time': 'Response time', 'col.ip': 'IP',
  'col.endpoint': 'Endpoint', 'col.sizes': 'Request / response', 'col.tokens': 'Tokens (in + out)',
  'col.cost': 'Cost', 'col.error': 'Error', 'col.limit': 'Limit', 'col.used': 'Used', 'col.remaining': 'Remaining',
  'pager.prev': '← Previous', 'pager.next': 'Next →', 'pager.summary': 'Page {page} of {pages} · {total} in all',
  'state.loading': 'Loading…', 'state.error': 'Could not load: {message}',
  'empty.keys': 'No keys yet. Create one to get started.', 'empty.keys_filtered': 'No key matches these filters.',
  'empty.logs': 'No calls match.', 'empty.calls': 'No calls in this period.',
  'empty.expiring': 'No key expires within the next 7 days.',
  'confirm.regenerate': 'A new key is shown (only once); the current key stops working when chosen below. Settings, limits and logs stay.',
  'field.grace': 'The current key keeps working',
  'grace.0': 'No: it stops working at once', 'grace.1': 'for 1 more hour', 'grace.24': 'for 24 more hours', 'grace.168': 'for 7 more days',
  'confirm.revoke': 'The key stops working at once and can never be used again. Its record and logs are kept.',
  'confirm.delete': 'The key and ALL its call logs are deleted permanently. This cannot be undone.',
  'msg.only_once': 'Copy this key now: you will not see it again. Closing this dialog loses it.',
  'msg.copied': 'Key copied to the clipboard', 'msg.saved': 'Saved', 'msg.renewed': 'Key renewed',
  'msg.batch_renewed': '{n} keys renewed', 'msg.revoked': 'Key revoked', 'msg.deleted': 'Key and its logs deleted',
  'msg.enabled': 'Key enabled', 'msg.disabled': 'Key disabled', 'msg.logged_out': 'You are logged out.',
  'msg.session_ended': 'Your session has ended; log in again.',
  'error.network': 'The server cannot be reached.', 'error.wrong_token': 'Wrong admin token.',
  'error.name_required': 'Give the key a name.', 'error.pick_date': 'Choose a date and time.',
  'error.activation_period': 'The period must be a whole number of 1 or more.',
  'error.limit_number': '{field}: enter a number of 0 or more (whole for counts).',
  'error.none_chosen': 'Choose at least one key.',
  'stats.days': '{n} days', 'stats.total': 'Calls', 'stats.success': 'Succeeded', 'stats.errors': 'Failed',
  'stats.success_rate': 'Success rate', 'stats.avg_time': 'Avg response time', 'stats.tokens': 'Tokens',
  'stats.prompt_completion': 'Prompt / completion tokens', 'stats.cost': 'Cost', 'stats.per_day': 'Calls per day',
  'stats.per_model': 'By model', 'stats.quota': 'Limits and what remains', 'stats.per_window': '{value} per {minutes} min',
  'chart.per_day_label': 'Calls per day over {days} days, succeeded and failed stacked',
  'chart.day_tooltip': '{date}: {success} succeeded, {error} failed',
  'log.success': 'Success', 'log.error': 'Error', 'log.stream': 'stream',
  'log.cache': 'cache: {read} read, {written} written',
  'usage.today': 'Today ${cost}', 'usage.week': 'This week ${cost}',
  'misc.never_used': 'Never', 'misc.no_model': '(none)', 'misc.unknown_key': 'Unknown key',
};

const zh = {
  'app.title': 'keygate 管理控制台',
  'nav.keys': '密钥', 'nav.logs': '日志', 'nav.main': '主导航', 'nav.language': '语言',
  'nav.skip': '跳到正文', 'nav.back_to_keys': '全部密钥',
  'title.login': '登录', 'title.keys': 'API 密钥', 'title.logs': '调用日志',
  'title.key_logs': '{name} 的调用日志', 'title.stats': '{name} 的统计',
  'title.create_key': '创建 API 密钥', 'title.edit_key': '编辑 {name}', 'title.renew_key': '续期 {name}',
  'title.batch_renew': '续期 7 天内到期的密钥', 'title.key_created': '密钥已创建',
  'title.key_regenerated': '已生成新密钥', 'title.regenerate': '重新生成 {name}？',
  'title.revoke': '撤销 {name}？', 'title.delete': '删除 {name}？',
  'action.login': '登录', 'action.logout': '退出登录', 'action.cancel': '取消', 'action.close': '关闭',
  'action.create_key': '创建密钥', 'action.create': '创建', 'action.save': '保存',
  'action.batch_renew': '批量续期…', 'action.renew_selected': '续期所选密钥',
  'action.stats': '统计', 'action.logs': '日志', 'action.edit': '编辑', 'action.renew': '续期',
  'action.enable': '启用', 'action.disable': '停用', 'action.regenerate': '重新生成',
  'action.revoke': '撤销', 'action.delete': '删除', 'action.copy': '复制', 'action.copied': '已复制 ✓',
  'action.saved_it': '我已保存', 'action.refresh': '刷新',
  'field.admin_token': '管理员令牌', 'field.name': '名称（必填）', 'field.description': '描述',
  'field.expiry': '过期时间', 'field.expires_at': '过期时间（本地时间）', 'field.new_expiry': '新的过期时间',
  'field.activation_period': '有效期（从首次使用开始计算）', 'field.activation_unit': '单位',
  'field.search': '搜索', 'field.status': '状态', 'field.tag': '标签', 'field.key': '密钥', 'field.keys': '密钥',
  'field.model': '模型', 'field.page_size': '每页行数', 'field.per_page': '每页 {n} 条',
  'field.period': '时间范围', 'field.extend_by': '延长', 'field.select_all': '全部选中',
  'field.full_key': '完整的 API 密钥',
  'field.allowed_models': '允许的模型', 'field.allowed_clients': '允许的客户端（User-Agent）',
  'field.allowed_ips': '允许的 IP 或网段', 'field.allowed_endpoints': '允许的端点', 'field.tags': '标签',
  'field.rate_limit_window': '限速窗口（分钟）', 'field.rate_limit_requests': '每窗口请求数',
  'field.rate_limit_tokens': '每窗口令牌数', 'field.rate_limit_cost': '每窗口费用（美元）',
  'field.concurrency_limit': '并发请求数', 'field.token_limit': '总令牌数',
  'field.daily_cost_limit': '每日费用（美元）', 'field.weekly_cost_limit': '每周费用（美元）',
  'field.total_cost_limit': '总费用（美元）',
  'section.restrictions': '访问限制（留空表示不限制）', 'section.limits': '用量限制',
  'hint.login': '请输入管理员令牌（KEYGATE_ADMIN_TOKEN）。会话保存在本页面无法读取的 Cookie 中，12 小时后或退出登录时失效。',
  'hint.search': '名称或描述', 'hint.tag': '完整标签', 'hint.model': '完整模型名',
  'hint.allowed_models': '逗号分隔；完整名称或 前缀*', 'hint.allowed_clients': '逗号分隔；完整名称或 前缀*',
  'hint.allowed_ips': '逗号分隔，例如 10.0.0.0/8', 'hint.allowed_endpoints': '逗号分隔，例如 /v1/chat/completions',
  'hint.tags': '逗号分隔的标签',
  'hint.limits': '留空表示不限制。限制从下一个请求起生效。',
  'hint.no_limit': '不限',
  'hint.activation': '密钥在首次使用前处于待激活状态，之后经过该时长过期。',
  'hint.renew': '续期也会重新启用已停用或已过期的密钥。',
  'hint.batch_renew': '所选密钥在当前过期时间的基础上延长相应天数。',
  'hint.use_key': '在 /v1 请求中使用 Authorization: Bearer <密钥> 或 X-API-Key: <密钥>。',
  'hint.sort': '按此列对全部密钥排序（再点一次反向）',
  'expiry.never': '永不过期', 'expiry.1h': '1 小时', 'expiry.1d': '1 天', 'expiry.days': '{n} 天',
  'expiry.custom': '选择日期和时间', 'expiry.activation': '从首次使用开始',
  'expiry.keep': '保持不变（{when}）', 'expiry.after_first_use': '首次使用后 {n} {unit}',
  'renew.days': '从现在起 {n} 天', 'renew.plus_days': '+{n} 天',
  'unit.days': '天', 'unit.hours': '小时', 'unit.ms': '毫秒',
  'status.active': '活跃', 'status.pending': '待激活', 'status.expired': '已过期',
  'status.disabled': '已停用', 'status.revoked': '已撤销', 'status.expiring': '即将过期',
  'filter.all_statuses': '全部', 'filter.all_keys': '全部密钥',
  'col.name': '名称', 'col.key': '密钥', 'col.status': '状态', 'col.expires': '过期时间', 'col.created': '创建时间',
  'col.usage': '调用次数', 'col.last_used': '最后使用', 'col.tags': '标签', 'col.actions': '操作', 'col.spend': '费用',
  'col.time': '时间', 'col.model': '模型', 'col.http': 'HTTP', 'col.response_time': '响应时间', 'col.ip': 'IP',
  'col.endpoint': '端点', 'col.sizes': '请求 / 响应大小', 'col.tokens': '令牌（输入 + 输出）',
  'col.cost': '费用', 'col.error': '错误', 'col.limit': '限制', 'col.used': '已用', 'col.remaining': '剩余',
  'pager.prev': '← 上一页', 'pager.next': '下一页 →', 'pager.summary': '第 {page} / {pages} 页 · 共 {total} 条',
  'state.loading': '加载中…', 'state.error': '加载失败：{message}',
  'empty.keys': '还没有密钥，创建一个开始使用。', 'empty.keys_filtered': '没有符合筛选条件的密钥。',
  'empty.logs': '没有符合条件的调用。', 'empty.calls': '这段时间内没有调用。',
  'empty.expiring': '未来 7 天内没有即将过期的密钥。',
  'confirm.regenerate': '将显示一个新密钥（仅显示一次）；当前密钥按下方选择的时间失效。设置、限制和日志保持不变。',
  'field.grace': '当前密钥继续可用',
  'grace.0': '否：立即失效', 'grace.1': '再用 1 小时', 'grace.24': '再用 24 小时', 'grace.168': '再用 7 天',
  'confirm.revoke': '密钥立即失效，且永远无法再次使用。密钥记录和日志会保留。',
  'confirm.delete': '密钥及其所有调用日志将被永久删除，此操作不可恢复。',
  'msg.only_once': '请立即复制此密钥：之后将无法再次查看。关闭此对话框后密钥即丢失。',
  'msg.copied': '密钥已复制到剪贴板', 'msg.saved': '已保存', 'msg.renewed': '密钥已续期',
  'msg.batch_renewed': '已续期 {n} 个密钥', 'msg.revoked': '密钥已撤销', 'msg.deleted': '密钥及其日志已删除',
  'msg.enabled': '密钥已启用', 'msg.disabled': '密钥已停用', 'msg.logged_out': '您已退出登录。',
  'msg.session_ended': '会话已结束，请重新登录。',
  'error.network': '无法连接服务器。', 'error.wrong_token': '管理员令牌错误。',
  'error.name_required': '请填写密钥名称。', 'error.pick_date': '请选择日期和时间。',
  'error.activation_period': '有效期必须是不小于 1 的整数。',
  'error.limit_number': '{field}：请输入不小于 0 的数字（计数须为整数）。',
  'error.none_chosen': '请至少选择一个密钥。',
  'stats.days': '{n} 天', 'stats.total': '调用次数', 'stats.success': '成功', 'stats.errors': '失败',
  'stats.success_rate': '成功率', 'stats.avg_time': '平均响应时间', 'stats.tokens': '令牌数',
  'stats.prompt_completion': '提示 / 补全令牌', 'stats.cost': '费用', 'stats.per_day': '每日调用',
  'stats.per_model': '按模型统计', 'stats.quota': '限制与剩余额度', 'stats.per_window': '每 {minutes} 分钟 {value}',
  'chart.per_day_label': '{days} 天内每日调用次数，成功与失败堆叠显示',
  'chart.day_tooltip': '{date}：成功 {success} 次，失败 {error} 次',
  'log.success': '成功', 'log.error': '失败', 'log.stream': '流式',
  'log.cache': '缓存：读取 {read}，写入 {written}',
  'usage.today': '今日 ${cost}', 'usage.week': '本周 ${cost}',
  'misc.never_used': '从未使用', 'misc.no_model': '（无）', 'misc.unknown_key': '未知密钥',
};

export const dictionaries = { en, zh };
const STORE = 'keygate.lang';
let current = pick();
const listeners = [];

function pick() {
  let saved = null;
  try {
    saved = localStorage.getItem(STORE);
  } catch {
    saved = null;
  }
  if (saved === 'en' || saved === 'zh') return saved;
  const wanted = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || 'en'];
  return wanted.some((l) => /^zh\b/i.test(l)) && /^zh/i.test(wanted[0]) ? 'zh' : 'en';
}

export function lang() {
  return current;
}

export function setLang(next) {
  if (!dictionaries[next] || next === current) return;
  current = next;
  try {
    localStorage.setItem(STORE, next);
  } catch {
    // Private mode: the choice lasts for this page only.
  }
  listeners.forEach((fn) => fn());
}

export function onLanguage(fn) {
  listeners.push(fn);
}

/** The text of `id` in the current language, with {name} placeholders filled in. */
export function t(id, params) {
  let text = dictionaries[current][id];
  if (text === undefined) {
    console.error(`keygate console: no ${current} text for ${id}`);
    text = en[id] ?? id;
  }
  if (params) {
    for (const [name, value] of Object.entries(params)) text = text.replaceAll(`{${name}}`, String(value));
  }
  return text;
}
