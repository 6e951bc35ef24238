// Calls to the server with the signed-in user's token: FHIR JSON in and out, a progress line
// while a call is slow, and every error turned into words that say what to do next.

const NEXT_STEP = {
  0: 'Check the network connection, then try again.',
  400: 'Check what was entered and try again.',
  401: 'Sign in again.',
  403: 'Your role does not allow this. Ask the clinic\'s administrator if you need it.',
  404: 'It may have been removed or moved meanwhile. Refresh and look again.',
  409: 'Someone else changed this first. The screen has been refreshed: choose again.',
  412: 'Someone else changed this first. The screen has been refreshed: choose again.',
  422: 'Check what was entered and try again.',
  429: 'The server is busy. Wait a moment and try again.',
  503: 'The server is busy. Wait a moment and try again.',
};

/** An answer the server refused, or no answer at all (status 0). */
export class ApiError extends Error {
  constructor(status, message, requestId) {
    super(message);
    this.status = status;
    this.requestId = requestId || null;
  }

  /** What the user should do next. */
  get nextStep() {
    if (NEXT_STEP[this.status]) return NEXT_STEP[this.status];
    const ref = this.requestId ? ` (error reference ${this.requestId})` : '';
    return `Try again in a minute. If it keeps failing, tell IT${ref}.`;
  }
}

/** The words of an OperationOutcome's issues, or null. */
export function outcomeText(body) {
  if (!body || body.resourceType !== 'OperationOutcome') return null;
  // this server's issues carry their words in diagnostics and a message id (FS-0403) in details
  const texts = (body.issue || []).map((i) => i.diagnostics || i.details?.text || i.code).filter(Boolean);
  return texts.join(' ') || null;
}

/** A message for any error a screen catches: what happened, then what to do next. */
export function describeError(error) {
  if (error instanceof ApiError) return `${error.message} ${error.nextStep}`;
  return `Something went wrong in the console (${error.message}). Reload the page and try again.`;
}

/** Shows "Loading…" in the progress line while any call has been running for 300 ms. */
export class Progress {
  constructor(element) {
    this.element = element;
    this.running = 0;
    this.timer = null;
  }

  start() {
    this.running += 1;
    if (this.running === 1) {
      this.timer = setTimeout(() => {
        this.element.textContent = 'Loading…';
        this.element.classList.add('busy');
      }, 300);
    }
  }

  stop() {
    this.running = Math.max(0, this.running - 1);
    if (this.running === 0) {
      clearTimeout(this.timer);
      this.element.textContent = '';
      this.element.classList.remove('busy');
    }
  }
}

/**
 * The API a screen uses (ctx.api). `base` is the FHIR base URL; `root` the server's root
 * (for /agent, /hl7, /audit… endpoints). `auth` gives {token(), refresh(), signInAgain()}.
 */
export class Api {
  constructor({ base, root, auth, progress }) {
    this.base = base.replace(/\/$/, '');
    this.root = root.replace(/\/$/, '');
    this.auth = auth;
    this.progress = progress;
  }

  /** GET a FHIR path ('Appointment', 'Appointment/$find') with query pairs or an object. */
  get(path, params) {
    return this.request('GET', this.url(path, params));
  }

  /** POST a FHIR resource (Parameters for an operation) to a FHIR path. */
  post(path, body, headers = {}) {
    return this.request('POST', this.url(path), { body, headers });
  }

  /** A URL under the FHIR base; a path starting with '/' is under the server's root. */
  url(path, params) {
    const url = new URL(path.startsWith('/') ? this.root + path : `${this.base}/${path}`);
    const pairs = Array.isArray(params) ? params : Object.entries(params || {});
    for (const [k, v] of pairs) if (v !== undefined && v !== null && v !== '') url.searchParams.append(k, v);
    return url.href;
  }

  /** Every page of a searchset's resources (following `next` links), up to `limit`. */
  async all(path, params, limit = 1000) {
    let bundle = await this.get(path, params);
    const out = [];
    for (;;) {
      for (const e of bundle.entry || []) if (e.search?.mode !== 'outcome') out.push(e.resource);
      const next = (bundle.link || []).find((l) => l.relation === 'next');
      if (!next || out.length >= limit) return out;
      bundle = await this.request('GET', next.url);
    }
  }

  async request(method, url, { body, headers = {} } = {}, retried = false) {
    const init = {
      method,
      headers: {
        Accept: 'application/fhir+json, application/json',
        Authorization: `Bearer ${this.auth.token()}`,
        ...(body !== undefined ? { 'Content-Type': 'application/fhir+json' } : {}),
        ...headers,
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    };
    this.progress.start();
    let response;
    try {
      response = await fetch(url, init);
    } catch {
      throw new ApiError(0, 'The server could not be reached.');
    } finally {
      this.progress.stop();
    }
    if (response.status === 401 && !retried) {
      if (await this.auth.refresh()) return this.request(method, url, { body, headers }, true);
      await this.auth.signInAgain(); // keeps what was typed, then leaves the page
    }
    const text = await response.text();
    let parsed = null;
    try { parsed = text ? JSON.parse(text) : null; } catch { parsed = null; }
    if (!response.ok) {
      const words = outcomeText(parsed) || `The server answered ${response.status}.`;
      throw new ApiError(response.status, words, response.headers.get('X-Request-ID'));
    }
    return parsed;
  }
}
