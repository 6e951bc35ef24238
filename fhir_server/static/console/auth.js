// SMART App Launch 2 (standalone) for the console: authorization code with PKCE S256 as the
// public client `console`, tokens kept in this tab's sessionStorage (gone when the tab closes),
// refresh with the refresh token (offline_access), RP-initiated logout.
// See https://build.fhir.org/ig/HL7/smart-app-launch/app-launch.html

export const CLIENT_ID = 'console';
// What the console asks for; the server grants what the user's role allows
// (security/smart/registry.py ROLE_SCOPES) and nothing patient-scoped.
export const SCOPE = 'openid fhirUser offline_access user/*.cruds ' +
  'user/Appointment.$find user/Appointment.$hold user/Appointment.$book user/AuditEvent.rs';

const SESSION = 'console.session';
const PENDING = 'console.pending';
const LEAVING = 'console.signout';

export class SignInError extends Error {
  constructor(message, code) { super(message); this.code = code; }
}

/** The console's own address, without query or fragment: its redirect URI. */
export function redirectUri() {
  return new URL('./', location.href).href;
}

/** The server's OpenID configuration (open, no token): endpoints and the FHIR base (issuer). */
export async function discover() {
  const url = new URL('../.well-known/openid-configuration', redirectUri());
  const response = await fetch(url);
  if (!response.ok) throw new SignInError('The server did not answer its sign-in settings. Reload the page in a minute.');
  return response.json();
}

function random(bytes) {
  return b64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

function b64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function claims(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

/** Send the browser to the server's sign-in page; `hash` is the screen to come back to. */
export async function signIn(config, hash) {
  const verifier = random(48);
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  const pending = { state: random(24), nonce: random(24), verifier, hash: hash || '' };
  sessionStorage.setItem(PENDING, JSON.stringify(pending));
  const url = new URL(config.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: CLIENT_ID,
    redirect_uri: redirectUri(),
    scope: SCOPE,
    state: pending.state,
    nonce: pending.nonce,
    aud: config.issuer,
    code_challenge: b64url(digest),
    code_challenge_method: 'S256',
  }).toString();
  location.assign(url.href);
  return new Promise(() => {}); // the page is leaving
}

/**
 * Finish a sign-in or sign-out the server sent the browser back from. Returns
 * {session, hash} after a sign-in, {signedOut: true} after a sign-out, null when the address
 * carries neither; throws SignInError when the server refused.
 */
export async function completeRedirect(config) {
  const params = new URLSearchParams(location.search);
  if (!params.has('code') && !params.has('error') && !params.has('state')) return null;
  const pending = JSON.parse(sessionStorage.getItem(PENDING) || 'null');
  const leaving = sessionStorage.getItem(LEAVING);
  sessionStorage.removeItem(PENDING);
  sessionStorage.removeItem(LEAVING);
  history.replaceState(null, '', redirectUri() + (pending?.hash || ''));
  if (!params.has('code') && !params.has('error') && leaving && params.get('state') === leaving) {
    return { signedOut: true };
  }
  if (!pending || params.get('state') !== pending.state) {
    throw new SignInError('This sign-in was not started from this tab, or it was already used. Sign in again.');
  }
  if (params.has('error')) {
    const why = params.get('error_description') || '';
    throw new SignInError(`The server refused the sign-in: ${params.get('error')}${why ? ` (${why})` : ''}.`, params.get('error'));
  }
  const answer = await tokenRequest(config, {
    grant_type: 'authorization_code',
    code: params.get('code'),
    redirect_uri: redirectUri(),
    client_id: CLIENT_ID,
    code_verifier: pending.verifier,
  });
  const session = keep(answer);
  if (session.claims.nonce && session.claims.nonce !== pending.nonce) {
    sessionStorage.removeItem(SESSION);
    throw new SignInError('The sign-in answer was not for this request. Sign in again.');
  }
  return { session, hash: pending.hash };
}

async function tokenRequest(config, form) {
  const response = await fetch(config.token_endpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new SignInError(`The server refused the sign-in: ${body.error || response.status}. Sign in again.`, body.error);
  }
  return body;
}

function keep(answer) {
  const old = current();
  const idToken = answer.id_token || old?.idToken || '';
  const session = {
    accessToken: answer.access_token,
    refreshToken: answer.refresh_token || old?.refreshToken || null,
    idToken,
    scope: answer.scope || old?.scope || '',
    expiresAt: Date.now() + 1000 * (answer.expires_in || 300),
    claims: claims(idToken),
  };
  sessionStorage.setItem(SESSION, JSON.stringify(session));
  return session;
}

/** The tab's session, or null. */
export function current() {
  return JSON.parse(sessionStorage.getItem(SESSION) || 'null');
}

/** A new access token from the refresh token; false when that is no longer possible. */
export async function refresh(config) {
  const session = current();
  if (!session?.refreshToken) return false;
  try {
    keep(await tokenRequest(config, {
      grant_type: 'refresh_token',
      refresh_token: session.refreshToken,
      client_id: CLIENT_ID,
    }));
    return true;
  } catch {
    return false;
  }
}

/** RP-initiated logout: the server revokes this user's tokens for the console and sends the
 * browser back here. */
export function signOut(config) {
  const session = current();
  sessionStorage.removeItem(SESSION);
  const state = random(16);
  sessionStorage.setItem(LEAVING, state);
  const url = new URL(config.end_session_endpoint);
  url.search = new URLSearchParams({
    id_token_hint: session?.idToken || '',
    post_logout_redirect_uri: redirectUri(),
    state,
  }).toString();
  location.assign(url.href);
}

/** What the granted scope allows: `can('Appointment', 'r')`, `can('Appointment', '$book')`. */
export function grants(scope) {
  const items = scope.split(/\s+/).filter((s) => s.startsWith('user/'));
  const v1 = { read: 'rs', write: 'cud', '*': 'cruds' };
  return {
    can(type, what) {
      return items.some((item) => {
        const [name, perms = ''] = item.slice(5).split('.');
        // the audit log is granted only by name (security/scopes.py NAMED_ONLY)
        if (name !== type && (name !== '*' || type === 'AuditEvent')) return false;
        if (what.startsWith('$')) return perms === what;
        return (v1[perms] || perms).includes(what);
      });
    },
  };
}
