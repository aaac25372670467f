// The admin API, through the session cookie (HttpOnly: this code never sees it).
import { t } from './i18n.js';

export class ApiError extends Error {
  constructor(status, reason, message, field) {
    super(message);
    this.status = status;
    this.reason = reason;
    /** For a 400: the request field at fault (`name`, `models[0]`, …). */
    this.field = field || null;
  }
}

let onSignedOut = () => {};
/** Called when a request finds the session gone (expired, logged out elsewhere, restart). */
export function whenSignedOut(fn) {
  onSignedOut = fn;
}

/** One JSON request to this origin; throws ApiError with the server's own message on failure. */
export async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' }, cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'network', t('error.network'));
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.message) || `${response.status} ${response.statusText}`;
    const error = new ApiError(response.status, data && data.error, message, data && data.field);
    if (response.status === 401 && path !== '/api/auth/login') onSignedOut();
    throw error;
  }
  return data;
}

/** A query string from the parameters that have a value. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== '') q.set(name, String(value));
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}
