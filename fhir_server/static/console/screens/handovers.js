// Handovers: the conversations the booking agent handed to staff (GET /agent/queue), one
// conversation's transcript, and the staff's actions on it (take, reply, hand back to the
// agent), through the agent's staff API (fhir_server/routes/agent.py). The queue is asked
// again every few seconds while the screen is open, so a new handover appears by itself and
// is announced politely to screen readers.

import { el, scrollable } from '../dom.js';

export const POLL_MS = 4000;

const REASONS = {
  patient_request: 'Asked for a person',
  emergency: 'Emergency',
  language: 'Language',
  billing: 'Billing',
  clinical: 'Clinical question',
  unable: 'The agent could not help',
  failures: 'The agent kept failing',
};

const SENDERS = {
  patient: 'Patient',
  agent: 'Agent',
  staff: 'Staff',
  clinic: 'Clinic',
  system: 'Note',
};

/** A reason code in words. */
export function reasonText(reason) {
  if (!reason) return 'Handed over';
  return REASONS[reason] || reason.replace(/_/g, ' ');
}

/** A time as the clinic reads it (local date and time). */
export function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** A conversation's transcript as an ordered list (also used by the audit screen). */
export function transcriptList(lines) {
  const list = el('ol', { class: 'transcript' });
  for (const line of lines) {
    const sender = SENDERS[line.sender] || line.sender;
    list.append(el('li', { class: `line line-${line.sender}` },
      el('span', { class: 'sender', text: sender }),
      el('time', { datetime: line.at, class: 'muted', text: when(line.at) }),
      el('p', { text: line.text })));
  }
  if (!lines.length) list.append(el('li', { class: 'muted', text: 'No messages yet.' }));
  return list;
}

export async function render(root, ctx) {
  const api = ctx.api;
  const mayAnswer = ctx.grants.can('Communication', 'u');
  root.append(
    el('h1', { id: 'handovers-title', text: 'Handovers' }),
    el('p', { class: 'muted', text: 'Conversations the booking agent handed to the front desk. ' +
      'The list refreshes by itself every few seconds.' }),
  );
  const live = el('div', { id: 'handovers-live', class: 'sr-only', role: 'status', 'aria-live': 'polite' });
  const count = el('span', { id: 'handovers-count' });
  const tbody = el('tbody');
  const table = el('table', { class: 'grid', 'aria-describedby': 'handovers-count' },
    el('caption', { class: 'sr-only', text: 'Conversations waiting for or held by staff' }),
    el('thead', {}, el('tr', {},
      ...['Since', 'Channel', 'Reason', 'Summary', 'Held by', ''].map((h) =>
        el('th', { scope: 'col', text: h })))),
    tbody);
  const queuePanel = el('section', { class: 'panel', 'aria-labelledby': 'handovers-queue-title' },
    el('h2', { id: 'handovers-queue-title', text: 'Waiting for staff' }), count,
    scrollable('Handed-over conversations', table));
  const detail = el('section', { class: 'panel', id: 'handovers-detail', 'aria-labelledby': 'handovers-conv-title' });
  root.append(live, el('div', { class: 'split' }, queuePanel, detail));

  let known = null; // ids in the queue at the last look (null: not looked yet)
  let updated = new Map();
  let openId = null;
  let lastError = '';
  let left = false;

  function emptyDetail() {
    openId = null;
    detail.replaceChildren(
      el('h2', { id: 'handovers-conv-title', text: 'Conversation' }),
      el('p', { class: 'muted', text: 'Open a conversation from the list to read it and answer.' }),
    );
  }

  async function loadQueue() {
    const rows = await api.get('/agent/queue');
    if (left) return;
    const ids = new Set(rows.map((r) => r.id));
    if (known) {
      const fresh = rows.filter((r) => !known.has(r.id));
      if (fresh.length) {
        live.textContent = fresh.map((r) =>
          `New handover: ${reasonText(r.reason)}${r.summary ? `, ${r.summary}` : ''} (${r.channel}).`).join(' ');
      }
    }
    known = ids;
    count.textContent = rows.length === 1 ? '1 conversation.' : `${rows.length} conversations.`;
    tbody.replaceChildren(...rows.map((r) => {
      const open = el('button', { type: 'button', class: 'secondary',
        'aria-label': `Open ${reasonText(r.reason)} (${r.channel}, since ${when(r.updated)})`, text: 'Open' });
      open.addEventListener('click', () => openConversation(r.id, true));
      const tr = el('tr', { 'data-conversation': r.id },
        el('td', {}, el('time', { datetime: r.updated, text: when(r.updated) })),
        el('td', { text: r.channel === 'sms' ? 'SMS' : 'Web chat' }),
        el('td', { text: reasonText(r.reason) }),
        el('td', { text: r.summary || '' }),
        el('td', { text: r.holder || (r.state === 'queued' ? 'Nobody yet' : '') }),
        el('td', {}, open));
      if (r.id === openId) tr.className = 'chosen';
      return tr;
    }));
    if (!rows.length) {
      tbody.append(el('tr', {}, el('td', { colspan: '6', class: 'muted',
        text: 'Nobody is waiting. New handovers appear here.' })));
    }
    // the open conversation changed (a patient wrote): read it again
    const before = updated;
    updated = new Map(rows.map((r) => [r.id, r.updated]));
    if (openId && before.has(openId) && updated.get(openId) !== before.get(openId)) {
      await openConversation(openId, false);
    }
  }

  async function openConversation(id, focus) {
    const c = await api.get(`/agent/conversations/${encodeURIComponent(id)}`).catch((error) => {
      ctx.notify(ctx.describeError(error));
      return null;
    });
    if (!c || left) return;
    openId = id;
    for (const tr of tbody.querySelectorAll('tr')) {
      tr.classList.toggle('chosen', tr.dataset.conversation === id);
    }
    const heading = el('h2', { id: 'handovers-conv-title', tabindex: '-1',
      text: `Conversation (${c.channel === 'sms' ? 'SMS' : 'web chat'})` });
    const facts = el('dl', { class: 'detail' },
      el('dt', { text: 'Reason' }), el('dd', { text: reasonText(c.handover?.reason) }),
      el('dt', { text: 'Summary' }), el('dd', { text: c.handover?.summary || '—' }),
      el('dt', { text: 'Held by' }), el('dd', { id: 'handovers-holder',
        text: c.holder || (c.state === 'agent' ? 'The agent' : 'Nobody yet') }));
    const parts = [heading, facts, el('h3', { text: 'Transcript' }), transcriptList(c.transcript)];
    if (mayAnswer && c.state !== 'agent') parts.push(actions(c));
    if (c.state === 'agent') parts.push(el('p', { class: 'muted', text: 'The agent holds this conversation.' }));
    const draft = detail.querySelector('#handovers-reply')?.value || '';
    detail.replaceChildren(...parts);
    const reply = detail.querySelector('#handovers-reply');
    if (reply && draft) reply.value = draft;
    const list = detail.querySelector('.transcript');
    list.scrollTop = list.scrollHeight;
    if (focus) heading.focus();
  }

  function actions(c) {
    const take = el('button', { type: 'button', text: 'Take' });
    take.disabled = c.state === 'staff' && c.holder === who();
    take.addEventListener('click', () => act(c.id, 'take', undefined, `You hold this conversation: the agent stays silent.`));
    const back = el('button', { type: 'button', class: 'secondary', text: 'Hand back to the agent' });
    back.addEventListener('click', () => act(c.id, 'release', undefined, 'Handed back to the agent.'));
    const text = el('textarea', { id: 'handovers-reply', 'data-draft': '', rows: '3', maxlength: '2000' });
    const form = el('form', { class: 'stack', id: 'handovers-reply-form' },
      el('label', { for: 'handovers-reply' }, 'Reply to the patient', text),
      el('div', { class: 'row' }, el('button', { type: 'submit', text: 'Send reply' })));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!text.value.trim()) {
        ctx.notify('Write the reply first, then send it.');
        text.focus();
        return;
      }
      const ok = await act(c.id, 'reply', { text: text.value }, 'Reply sent to the patient.');
      if (ok) {
        const box = detail.querySelector('#handovers-reply');
        if (box) { box.value = ''; box.focus(); }
      }
    });
    return el('div', { class: 'stack' }, el('div', { class: 'row' }, take, back), form);
  }

  function who() {
    return ctx.session.claims.fhirUser?.replace(`${ctx.fhirBase.replace(/\/$/, '')}/`, '') || null;
  }

  async function act(id, action, body, done) {
    try {
      await api.request('POST', api.url(`/agent/conversations/${encodeURIComponent(id)}/${action}`), {
        body, headers: { 'Content-Type': 'application/json' },
      });
    } catch (error) {
      ctx.notify(ctx.describeError(error));
      return false;
    }
    ctx.notify(done, 'info');
    if (action === 'release') {
      if (detail.querySelector('#handovers-reply')) detail.querySelector('#handovers-reply').value = '';
      emptyDetail();
    }
    await refresh();
    if (action !== 'release') {
      await openConversation(id, false);
    }
    return true;
  }

  async function refresh() {
    try {
      await loadQueue();
      lastError = '';
    } catch (error) {
      const said = ctx.describeError(error);
      if (said !== lastError) ctx.notify(said); // a failing poll speaks once, not every time
      lastError = said;
    }
  }

  emptyDetail();
  await loadQueue(); // a refusal here is the screen's error (the shell shows it)
  const timer = setInterval(refresh, POLL_MS);
  return () => {
    left = true;
    clearInterval(timer);
  };
}
