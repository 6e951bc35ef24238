// The console's shell: sign-in and sign-out, the menu of screens the user's role may use,
// the notice line and the progress line; each screen is a module of its own (screens/).
import { Api, Progress, describeError } from './api.js';
import * as auth from './auth.js';
import { SCREENS } from './screens/index.js';

const DRAFTS = 'console.drafts';
const $ = (id) => document.getElementById(id);
const main = $('main');
let config = null;
let leaveScreen = null;

/** Show a message in the notice line ('error' or 'info'); an empty one hides it. */
function notify(message, kind = 'error') {
  const notice = $('notice');
  notice.hidden = !message;
  notice.className = `notice ${kind}`;
  notice.textContent = message || '';
}

/** Keep what the user typed (fields with data-draft and an id) before leaving to sign in. */
function saveDrafts() {
  const values = {};
  for (const field of main.querySelectorAll('[data-draft][id]')) values[field.id] = field.value;
  sessionStorage.setItem(DRAFTS, JSON.stringify({ hash: location.hash, values }));
}

function restoreDrafts() {
  const saved = JSON.parse(sessionStorage.getItem(DRAFTS) || 'null');
  if (!saved || saved.hash !== location.hash) return;
  sessionStorage.removeItem(DRAFTS);
  for (const [id, value] of Object.entries(saved.values)) {
    const field = document.getElementById(id);
    if (field && field.matches('[data-draft]')) field.value = value;
  }
  notify('You are signed in again. What you had typed is back.', 'info');
}

function landing(message) {
  document.title = 'Sign in · fhir-sched console';
  $('nav').replaceChildren();
  $('who').textContent = '';
  $('signout').hidden = true;
  const box = document.createElement('section');
  box.className = 'landing';
  box.innerHTML = '<h1>Staff console</h1><p>Sign in with your clinic account to see the ' +
    'calendar and the other screens your role allows.</p>';
  if (message) {
    const p = document.createElement('p');
    p.className = 'error-text';
    p.id = 'signin-error';
    p.textContent = message;
    box.append(p);
  }
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = 'Sign in';
  button.addEventListener('click', () => auth.signIn(config, location.hash));
  box.append(button);
  main.replaceChildren(box);
  button.focus();
}

function menu(screens, active) {
  const links = screens.map((s) => {
    const a = document.createElement('a');
    a.href = `#${s.id}`;
    a.textContent = s.title;
    if (s.id === active) a.setAttribute('aria-current', 'page');
    return a;
  });
  $('nav').replaceChildren(...links);
}

// A screen behind a door that no scope names (HL7: ROLE_DOORS) has a `probe(api)`: one cheap
// call, made once per page load; the menu offers the screen when the server answers it.
const probes = new Map();
function probe(screen) {
  if (!screen.probe) return Promise.resolve(true);
  if (!probes.has(screen.id)) probes.set(screen.id, screen.probe(api).then(() => true, () => false));
  return probes.get(screen.id);
}

async function show(session) {
  const grants = auth.grants(session.scope);
  const offered = SCREENS.filter((s) => s.allowed(grants));
  const answered = await Promise.all(offered.map(probe));
  const screens = offered.filter((_, i) => answered[i]);
  const wanted = location.hash.slice(1);
  // a screen the menu does not offer is still opened when asked for by address: the server
  // decides what the token may read, and the screen shows its refusal
  const screen = SCREENS.find((s) => s.id === wanted) || screens[0];
  const who = (session.claims.fhirUser || '').replace(`${config.issuer.replace(/\/$/, '')}/`, '');
  // a user with no clinic record (fhirUser) is named by the start of their user id
  const sub = session.claims.sub ? `user ${String(session.claims.sub).slice(0, 8)}` : 'staff';
  $('who').textContent = `Signed in as ${who || sub}`;
  $('signout').hidden = false;
  menu(screens, screen?.id);
  if (leaveScreen) { leaveScreen(); leaveScreen = null; }
  if (!screen) {
    main.innerHTML = '<h1>Nothing to show</h1>';
    const p = document.createElement('p');
    p.textContent = 'Your account was granted no access to the console\'s screens. Ask the ' +
      'clinic\'s administrator for a staff role, then sign out and in again.';
    main.append(p);
    return;
  }
  document.title = `${screen.title} · fhir-sched console`;
  if (location.hash !== `#${screen.id}`) history.replaceState(null, '', `#${screen.id}`);
  const root = document.createElement('section');
  root.className = `screen screen-${screen.id}`;
  root.setAttribute('aria-labelledby', `${screen.id}-title`);
  main.replaceChildren(root);
  const ctx = {
    api,
    grants,
    session,
    notify,
    describeError,
    fhirBase: config.issuer,
  };
  try {
    const module = await import(screen.module);
    const cleanup = await module.render(root, ctx);
    if (typeof cleanup === 'function') leaveScreen = cleanup;
    restoreDrafts();
  } catch (error) {
    notify(describeError(error));
  }
}

const api = new Api({
  base: '',
  root: '',
  progress: new Progress($('progress')),
  auth: {
    token: () => auth.current()?.accessToken || '',
    refresh: () => auth.refresh(config),
    signInAgain: async () => {
      saveDrafts();
      return auth.signIn(config, location.hash);
    },
  },
});

async function start() {
  try {
    config = await auth.discover();
  } catch (error) {
    main.textContent = error.message;
    return;
  }
  api.base = config.issuer.replace(/\/$/, '');
  api.root = api.base.replace(/\/fhir$/, '');
  $('signout').addEventListener('click', () => auth.signOut(config));
  window.addEventListener('hashchange', () => {
    const session = auth.current();
    if (session) { notify(''); show(session); }
  });
  let done;
  try {
    done = await auth.completeRedirect(config);
  } catch (error) {
    landing(error.message);
    return;
  }
  if (done?.signedOut) {
    landing();
    notify('You are signed out.', 'info');
    return;
  }
  const session = auth.current();
  if (!session) {
    landing();
    return;
  }
  show(session);
}

start();
