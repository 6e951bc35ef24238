// Audit: the compliance officer's view of the audit log (GET /fhir/AuditEvent, which only a
// scope naming AuditEvent opens) and of its hash chain (GET /audit/verify). Search by patient,
// user or client, date range, action and outcome; each event in words (who, what, when, from
// where, outcome, the conversation when there is one); "Export NDJSON" of the whole result.
import { transcriptList, when } from './handovers.js';
import { el, scrollable } from '../dom.js';

const PAGE = 20;
const CONVERSATION = 'urn:fhir-sched:conversation';

const ACTIONS = { C: 'Create', R: 'Read', U: 'Update', D: 'Delete', E: 'Execute' };
const OUTCOMES = { 0: 'Success', 4: 'Minor failure', 8: 'Serious failure', 12: 'Major failure' };

function field(id, label, input, hint) {
  input.id = id;
  input.setAttribute('data-draft', '');
  const box = el('div', { class: 'field' }, el('label', { for: id, text: label }), input);
  if (hint) {
    const h = el('span', { class: 'hint', id: `${id}-hint`, text: hint });
    input.setAttribute('aria-describedby', h.id);
    box.append(h);
  }
  return box;
}

function choice(options) {
  return el('select', {}, el('option', { value: '', text: 'Any' }),
    ...Object.entries(options).map(([value, text]) => el('option', { value, text })));
}

/** The next day of a yyyy-mm-dd date (the search's exclusive end). */
function dayAfter(date) {
  const d = new Date(`${date}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + 1);
  return d.toISOString().slice(0, 10);
}

function reference(who) {
  if (!who) return '';
  if (who.reference) return who.reference;
  const id = who.identifier;
  if (id) {
    if (id.system === 'urn:fhir-sched:client') return `client ${id.value}`;
    if (id.system === 'urn:fhir-sched:user') return `user ${id.value}`;
    return `${id.system}|${id.value}`;
  }
  return who.display || '';
}

/** Who did it: the user (when there is one), the client, and the address it came from. */
export function who(event) {
  const agents = event.agent || [];
  const user = agents.find((a) => a.type?.coding?.some((c) => c.code === 'humanuser'));
  const client = agents.find((a) => a.who?.identifier?.system === 'urn:fhir-sched:client');
  const address = agents.find((a) => a.network?.type === '2')?.network?.address;
  return { user: user ? reference(user.who) : '', client: client ? client.who.identifier.value : '', address: address || '' };
}

function decode(query) {
  try {
    return new TextDecoder().decode(Uint8Array.from(atob(query), (c) => c.charCodeAt(0)));
  } catch {
    return query;
  }
}

/** The entities in words, and the conversation's id when one is named. */
export function entities(event) {
  const out = [];
  let conversation = null;
  for (const e of event.entity || []) {
    if (e.what?.reference) {
      out.push(e.role?.display === 'Patient' ? `Patient: ${e.what.reference}` : e.what.reference);
    } else if (e.what?.identifier) {
      const { system, value } = e.what.identifier;
      if (system === CONVERSATION) {
        conversation = value;
        out.push(`conversation ${value}`);
      } else out.push(`${system.replace('urn:fhir-sched:', '')} ${value}`);
    } else if (e.query) out.push(`query: ${decode(e.query)}`);
    else if (e.description) out.push(e.description);
  }
  return { items: out, conversation };
}

function what(event) {
  const type = event.type?.display || event.type?.code || '';
  const sub = (event.subtype || []).map((s) => s.display || s.code).filter(Boolean).join(', ');
  return { type, sub, action: ACTIONS[event.action] || event.action || '' };
}

export async function render(root, ctx) {
  const api = ctx.api;
  const mayReadConversations = ctx.grants.can('Communication', 'r');
  const chain = el('div', { id: 'audit-chain', class: 'chain', role: 'status' }, 'Checking the audit chain…');
  const patient = field('audit-patient', 'Patient', el('input', { type: 'text', autocomplete: 'off' }),
    'Its id, e.g. pat-1 or Patient/pat-1');
  const agent = field('audit-agent', 'User or client', el('input', { type: 'text', autocomplete: 'off' }),
    'Practitioner/… or PractitionerRole/…, a user name, or a client id');
  const from = field('audit-from', 'From', el('input', { type: 'date' }));
  const to = field('audit-to', 'To (inclusive)', el('input', { type: 'date' }));
  const action = field('audit-action', 'Action', choice(ACTIONS));
  const outcome = field('audit-outcome', 'Outcome', choice(OUTCOMES));
  const talk = field('audit-conversation-id', 'Conversation', el('input', { type: 'text', autocomplete: 'off' }),
    'A booking agent conversation\'s id');
  const search = el('button', { type: 'submit', text: 'Search' });
  const form = el('form', { class: 'controls', id: 'audit-form', 'aria-label': 'Search the audit log' },
    patient, agent, from, to, action, outcome, talk, el('div', { class: 'row' }, search));
  const summary = el('p', { id: 'audit-summary', class: 'muted' });
  const tbody = el('tbody');
  const table = el('table', { class: 'grid', 'aria-describedby': 'audit-summary' },
    el('caption', { class: 'sr-only', text: 'Audit events, newest first' }),
    el('thead', {}, el('tr', {},
      ...['When', 'Who', 'What', 'Concerning', 'From where', 'Outcome'].map((h) =>
        el('th', { scope: 'col', text: h })))),
    tbody);
  const previous = el('button', { type: 'button', class: 'secondary', id: 'audit-previous', text: 'Newer events' });
  const next = el('button', { type: 'button', class: 'secondary', id: 'audit-next', text: 'Older events' });
  const exportButton = el('button', { type: 'button', id: 'audit-export', text: 'Export NDJSON' });
  const exported = el('span', { id: 'audit-exported', class: 'muted', role: 'status' });
  const conversation = el('section', { class: 'panel', id: 'audit-conversation', hidden: '',
    'aria-labelledby': 'audit-conversation-title' });
  previous.hidden = true;
  next.hidden = true;
  exportButton.disabled = true;
  root.append(
    el('h1', { id: 'audit-title', text: 'Audit log' }),
    chain,
    el('p', { class: 'muted', text: 'Who did what with whose record, when, from where, and how it ended. ' +
      'Searching is itself recorded.' }),
    form,
    el('div', { class: 'row' }, summary, exportButton, exported),
    scrollable('Audit events', table),
    el('div', { class: 'row' }, previous, next),
    conversation);

  let params = [];
  let pages = []; // the URLs of the pages shown so far (the last is the current one)
  let nextUrl = null;

  function query() {
    const pairs = [];
    const v = (id) => root.querySelector(`#${id}`).value.trim();
    if (v('audit-patient')) pairs.push(['patient', v('audit-patient')]);
    if (v('audit-agent')) pairs.push(['agent', v('audit-agent')]);
    if (v('audit-from')) pairs.push(['date', `ge${v('audit-from')}`]);
    if (v('audit-to')) pairs.push(['date', `lt${dayAfter(v('audit-to'))}`]);
    if (v('audit-action')) pairs.push(['action', v('audit-action')]);
    if (v('audit-outcome')) pairs.push(['outcome', v('audit-outcome')]);
    if (v('audit-conversation-id')) pairs.push(['entity:identifier', `${CONVERSATION}|${v('audit-conversation-id')}`]);
    return pairs;
  }

  async function show(url) {
    const bundle = await api.request('GET', url);
    const events = (bundle.entry || []).filter((e) => e.search?.mode !== 'outcome').map((e) => e.resource);
    tbody.replaceChildren(...events.map(row));
    if (!events.length) {
      tbody.append(el('tr', {}, el('td', { colspan: '6', class: 'muted',
        text: 'No event matches. Widen the dates or clear a field.' })));
    }
    nextUrl = (bundle.link || []).find((l) => l.relation === 'next')?.url || null;
    next.hidden = !nextUrl;
    previous.hidden = pages.length < 2;
    const first = (pages.length - 1) * PAGE + 1;
    const total = typeof bundle.total === 'number' ? ` of ${bundle.total}` : '';
    summary.textContent = events.length
      ? `Events ${first} to ${first + events.length - 1}${total}, newest first.` : 'No events.';
    exportButton.disabled = !events.length;
  }

  function row(event) {
    const w = who(event);
    const x = what(event);
    const ent = entities(event);
    const whoCell = el('td', {},
      w.user ? el('div', { text: w.user }) : null,
      el('div', { class: w.user ? 'muted' : '', text: w.client ? `via ${w.client}` : '' }));
    const concerning = el('td', {}, ...ent.items.map((t) => el('div', { class: 'entity', text: t })));
    if (ent.conversation && mayReadConversations) {
      const open = el('button', { type: 'button', class: 'link',
        text: 'Read the conversation' });
      open.addEventListener('click', () => readConversation(ent.conversation));
      concerning.append(open);
    }
    const ok = event.outcome === '0';
    return el('tr', {},
      el('td', {}, el('time', { datetime: event.recorded, text: when(event.recorded) })),
      whoCell,
      el('td', {}, el('div', { text: `${x.action} · ${x.type}` }), el('div', { class: 'muted', text: x.sub })),
      concerning,
      el('td', { text: w.address }),
      el('td', {}, el('span', { class: ok ? 'ok-text' : 'error-text', text: OUTCOMES[event.outcome] || event.outcome }),
        event.outcomeDesc ? el('div', { class: 'muted', text: event.outcomeDesc }) : null));
  }

  async function readConversation(id) {
    let c;
    try {
      c = await api.get(`/agent/conversations/${encodeURIComponent(id)}`);
    } catch (error) {
      ctx.notify(ctx.describeError(error));
      return;
    }
    const heading = el('h2', { id: 'audit-conversation-title', tabindex: '-1', text: `Conversation ${id}` });
    const close = el('button', { type: 'button', class: 'secondary', text: 'Close the conversation' });
    close.addEventListener('click', () => { conversation.hidden = true; search.focus(); });
    conversation.replaceChildren(heading,
      el('p', { class: 'muted', text: `${c.channel === 'sms' ? 'SMS' : 'Web chat'}; ${c.handover?.summary || 'no handover'}` }),
      transcriptList(c.transcript), close);
    conversation.hidden = false;
    heading.focus();
  }

  async function run() {
    params = [...query(), ['_count', PAGE]];
    pages = [api.url('AuditEvent', params)];
    conversation.hidden = true;
    exported.textContent = '';
    await show(pages[0]);
  }

  async function exportNdjson() {
    exportButton.disabled = true;
    exported.textContent = 'Exporting…';
    try {
      const events = await api.all('AuditEvent', params.filter(([k]) => k !== '_count').concat([['_count', 500]]), 100000);
      const blob = new Blob(events.map((e) => `${JSON.stringify(e)}\n`), { type: 'application/x-ndjson' });
      const link = el('a', { href: URL.createObjectURL(blob), download: `audit-${new Date().toISOString().slice(0, 19).replace(/:/g, '')}.ndjson` });
      link.hidden = true;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
      exported.textContent = `${events.length} event(s) exported.`;
    } catch (error) {
      exported.textContent = '';
      ctx.notify(ctx.describeError(error));
    } finally {
      exportButton.disabled = false;
    }
  }

  async function verify() {
    const status = await api.get('/audit/verify');
    chain.classList.toggle('chain-ok', status.intact);
    chain.classList.toggle('chain-broken', !status.intact);
    const through = status.verified_through;
    const checked = `checked ${when(status.verified_at)}${status.full_verified_at ? `, whole chain walked ${when(status.full_verified_at)}` : ''}`;
    chain.textContent = status.intact
      ? `Audit chain intact through record ${through?.seq ?? 0}${through?.recorded ? ` (${when(through.recorded)})` : ''}; ${checked}.`
      : `Audit chain BROKEN at record ${status.broken_at ?? '?'}: ${status.reason || 'see the findings'}. ` +
        `${status.finding_count || 0} finding(s); ${checked}. Tell the security officer: run \`fhir-sched audit verify\`.`;
  }

  const go = (work) => work().catch((error) => ctx.notify(ctx.describeError(error)));
  form.addEventListener('submit', (event) => { event.preventDefault(); ctx.notify(''); go(run); });
  next.addEventListener('click', () => go(async () => { pages.push(nextUrl); await show(nextUrl); }));
  previous.addEventListener('click', () => go(async () => { pages.pop(); await show(pages[pages.length - 1]); }));
  exportButton.addEventListener('click', exportNdjson);

  // the chain's status first (a refused token is refused here: the shell shows the server's words)
  try {
    await verify();
  } catch (error) {
    chain.textContent = 'The audit chain could not be checked.';
    throw error;
  }
  await run();
}
