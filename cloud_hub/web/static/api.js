// The hub's REST API with the session's token (sessionStorage: gone when the tab closes).

const KEY = "edgepilot.token";
export const API = "/api/v1";

export class AuthError extends Error {
  constructor(status, detail) {
    super(detail || `the hub refused the token (${status})`);
    this.status = status;
  }
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `the hub answered ${status}`);
    this.status = status;
  }
}

export function getToken() {
  return sessionStorage.getItem(KEY);
}

export function setToken(token) {
  sessionStorage.setItem(KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
}

/**
 * A link `/ui/#token=ep_...` signs in once: the token is kept for the session and taken out of
 * the address (and so out of the history) before anything else runs. Whether there was one.
 */
export function takeTokenFromUrl() {
  const match = /^#token=([^&]+)/.exec(location.hash);
  if (!match) return false;
  setToken(decodeURIComponent(match[1]));
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
  return true;
}

export function authHeaders(token = getToken()) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function detailOf(resp) {
  try {
    const body = await resp.json();
    return typeof body.detail === "string" ? body.detail : null;
  } catch {
    return null;
  }
}

/** GET a JSON document of the API; AuthError on 401/403, ApiError on any other error. */
export async function getJson(path, { token, signal } = {}) {
  const resp = await fetch(`${API}${path}`, {
    headers: { Accept: "application/json", ...authHeaders(token) },
    cache: "no-store",
    signal,
  });
  if (resp.status === 401 || resp.status === 403) {
    throw new AuthError(resp.status, await detailOf(resp));
  }
  if (!resp.ok) throw new ApiError(resp.status, await detailOf(resp));
  return resp.json();
}
