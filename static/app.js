// The console's entry: language, login and logout, and the views behind the #/ routes.
import { api, whenSignedOut } from './api.js';
import { renderAudit } from './audit.js';
import { fill, h } from './dom.js';
import { lang, onLanguage, setLang, t } from './i18n.js';
import { renderKeys } from './keys.js';
import { renderLogs } from './logs.js';
import { renderStats } from './stats.js';
import { renderUpstreams } from './upstreams.js';

const main = document.getElementById('main');
let signedIn = false;

function chrome() {
  document.documentElement.lang = lang() === 'zh' ? 'zh-CN' : 'en';
  document.title = t('app.title');
  document.getElementById('skip-link').textContent = t('nav.skip');
  document.getElementById('nav-keys').textContent = t('nav.keys');
  document.getElementById('nav-logs').textContent = t('nav.logs');
  document.getElementById('nav-upstreams').textContent = t('nav.upstreams');
  document.getElementById('nav-audit').textContent = t('nav.audit');
  document.getElementById('nav').setAttribute('aria-label', t('nav.main'));
  document.getElementById('lang-label').textContent = t('nav.language');
  document.getElementById('lang-select').value = lang();
  document.getElementById('logout').textContent = t('action.logout');
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('logout').hidden = !signedIn;
}

function showLogin(message) {
  signedIn = false;
  chrome();
  const token = h('input', { type: 'password', id: 'login-token', autocomplete: 'current-password', required: true, 'aria-describedby': 'login-hint' });
  const error = h('div', { class: 'alert', role: 'alert', id: 'login-error', hidden: !message, text: message || '' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', id: 'login-submit' }, t('action.login'));
  const form = h('form', { class: 'login panel', id: 'login-form' },
    h('h1', { text: t('title.login') }),
    h('p', { id: 'login-hint', text: t('hint.login') }),
    error,
    h('label', { class: 'field', for: 'login-token' }, h('span', { text: t('field.admin_token') }), token),
    submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.hidden = true;
    try {
      await api('POST', '/api/auth/login', { token: token.value });
      token.value = '';
      signedIn = true;
      chrome();
      if (!location.hash || location.hash === '#/login') location.hash = '#/keys';
      else route();
    } catch (err) {
      error.textContent = err.status === 401 ? t('error.wrong_token') : err.message;
      error.hidden = false;
      token.select();
    } finally {
      submit.disabled = false;
    }
  });
  fill(main, form);
  token.focus();
}

async function logout() {
  try {
    await api('POST', '/api/auth/logout');
  } catch {
    // The session is gone either way.
  }
  showLogin(t('msg.logged_out'));
}

/** Shows the view the hash names: #/keys, #/logs, #/upstreams, #/audit, #/keys/ID/stats, #/keys/ID/logs. */
function route() {
  if (!signedIn) return;
  const hash = location.hash.replace(/^#/, '') || '/keys';
  const parts = hash.split('/').filter(Boolean);
  for (const link of document.querySelectorAll('#nav a')) {
    const current = link.id === `nav-${parts[0]}` || (link.id === 'nav-keys' && !['logs', 'upstreams', 'audit'].includes(parts[0]));
    if (current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (parts[0] === 'keys' && /^\d+$/.test(parts[1] || '') && parts[2] === 'stats') renderStats(main, Number(parts[1]));
  else if (parts[0] === 'keys' && /^\d+$/.test(parts[1] || '') && parts[2] === 'logs') renderLogs(main, Number(parts[1]));
  else if (parts[0] === 'logs') renderLogs(main, null);
  else if (parts[0] === 'upstreams') renderUpstreams(main);
  else if (parts[0] === 'audit') renderAudit(main);
  else renderKeys(main);
}

async function start() {
  whenSignedOut(() => {
    if (signedIn) showLogin(t('msg.session_ended'));
  });
  document.getElementById('lang-select').addEventListener('change', (event) => setLang(event.target.value));
  document.getElementById('logout').addEventListener('click', logout);
  onLanguage(() => (signedIn ? (chrome(), route()) : showLogin()));
  window.addEventListener('hashchange', () => {
    route();
    main.focus({ preventScroll: true });
  });
  chrome();
  try {
    // Is there a session already (the cookie is HttpOnly: ask the server)?
    await api('GET', '/api/api-keys?page_size=1');
    signedIn = true;
    chrome();
    route();
  } catch (err) {
    if (err.status === 401) showLogin();
    else fill(main, h('p', { class: 'state state-error', role: 'alert', text: t('state.error', { message: err.message }) }));
  }
}

start();
