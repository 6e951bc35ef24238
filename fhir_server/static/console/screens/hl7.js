// HL7 messages: what `fhir-sched hl7 messages`, `show` and `replay` give, through GET
// /hl7/messages (roles interface and front-desk: no message content), GET /hl7/messages/{id}
// and POST /hl7/messages/{id}/replay (role interface only: the message is patient data, a
// replay changes appointments). The server decides: a refusal is shown as it answered.

import { el, scrollable } from '../dom.js';

const PAGE = 25;

const FILTERS = {
  attention: { label: 'Failed, conflicting and rejected (inbound)', params: { status: 'failed,conflict,rejected', direction: 'in' } },
  warnings: { label: 'Applied with warnings (inbound)', params: { warnings: 'true', direction: 'in' } },
  inbound: { label: 'All inbound', params: { direction: 'in' } },
  all: { label: 'All, both directions', params: {} },
};

// HL7 table 0357, the error codes an ACK carries
const ERRORS = {
  100: 'Segment sequence error',
  101: 'Required field missing',
  102: 'Data type error',
  103: 'Table value not found',
  200: 'Unsupported message type',
  201: 'Unsupported event code',
  202: 'Unsupported processing id',
  203: 'Unsupported version id',
  204: 'Unknown key identifier',
  205: 'Duplicate key identifier',
  206: 'Application record locked',
  207: 'Application internal error',
};

const STATUS_TEXT = {
  received: 'Received, not applied yet',
  applied: 'Applied',
  conflict: 'Conflict',
  superseded: 'Superseded',
  failed: 'Failed',
  rejected: 'Rejected',
  pending: 'Waiting to be sent',
  sent: 'Sent',
};

function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** Why a message is listed: the HL7 error (table 0357) and the warning codes. */
export function why(m) {
  const parts = [];
  if (m.error) parts.push(`${m.error} ${ERRORS[m.error] || ''}`.trim());
  if (m.ack_code && m.ack_code !== 'AA') parts.push(`ACK ${m.ack_code}`);
  if (m.warnings?.length) parts.push(`warnings: ${m.warnings.join(', ')}`);
  return parts.join('; ') || '—';
}

export async function render(root, ctx) {
  const api = ctx.api;
  const filter = el('select', { id: 'hl7-filter', 'data-draft': '' },
    ...Object.entries(FILTERS).map(([value, f]) => el('option', { value, text: f.label })));
  const form = el('form', { class: 'controls', id: 'hl7-form' },
    el('label', { for: 'hl7-filter' }, 'Show', filter),
    el('button', { type: 'submit', text: 'Show' }));
  const count = el('p', { id: 'hl7-count', class: 'muted' });
  const tbody = el('tbody');
  const table = el('table', { class: 'grid', 'aria-describedby': 'hl7-count' },
    el('caption', { class: 'sr-only', text: 'Stored HL7 messages, newest first' }),
    el('thead', {}, el('tr', {},
      ...['Received', 'Event', 'Control id', 'From', 'Status', 'Why', 'Attempts', ''].map((h) =>
        el('th', { scope: 'col', text: h })))),
    tbody);
  const more = el('button', { type: 'button', class: 'secondary', id: 'hl7-more', text: 'Older messages' });
  more.hidden = true;
  const detail = el('section', { class: 'panel', id: 'hl7-detail', 'aria-labelledby': 'hl7-detail-title', hidden: '' });
  root.append(
    el('h1', { id: 'hl7-title', text: 'HL7 messages' }),
    el('p', { class: 'muted', text: 'Messages the EMRs sent (and this server sent them). Open one ' +
      'to read it and why it failed; the EMR team replays a failed one once its cause is fixed.' }),
    form, count, scrollable('HL7 messages', table), el('div', { class: 'row' }, more), detail);

  let before = null;
  let shown = 0;

  async function list(append) {
    const params = { ...FILTERS[filter.value].params, _count: PAGE };
    if (append && before) params.before = before;
    const answer = await api.get('/hl7/messages', params);
    if (!append) { tbody.replaceChildren(); shown = 0; }
    for (const m of answer.messages) tbody.append(row(m));
    shown += answer.messages.length;
    before = answer.next_before;
    more.hidden = !before;
    count.textContent = shown ? `${shown} message(s) shown${before ? '; older ones follow' : ''}.` : '';
    if (!shown) {
      tbody.append(el('tr', {}, el('td', { colspan: '8', class: 'muted', text: 'No message matches.' })));
    }
  }

  function row(m) {
    const open = el('button', { type: 'button', class: 'secondary', text: 'Open',
      'aria-label': `Open message ${m.control_id || m.id} (${m.event || 'no event'})` });
    open.addEventListener('click', () => openMessage(m.id));
    return el('tr', { 'data-message': m.id },
      el('td', {}, el('time', { datetime: m.created, text: when(m.created) })),
      el('td', { text: `${m.direction === 'in' ? 'in' : 'out'} ${m.event || ''}`.trim() }),
      el('td', { text: m.control_id || '' }),
      el('td', { text: m.peer || '' }),
      el('td', {}, el('span', { class: `status status-${m.status}`, text: STATUS_TEXT[m.status] || m.status })),
      el('td', { text: why(m) }),
      el('td', { text: String(m.attempts ?? '') }),
      el('td', {}, open));
  }

  function showDetail(title, ...parts) {
    const heading = el('h2', { id: 'hl7-detail-title', tabindex: '-1', text: title });
    detail.replaceChildren(heading, ...parts);
    detail.hidden = false;
    heading.focus();
  }

  async function openMessage(id) {
    let m;
    try {
      m = await api.get(`/hl7/messages/${encodeURIComponent(id)}`);
    } catch (error) {
      showDetail('Message not shown',
        el('p', { class: 'error-text', id: 'hl7-refused', text: ctx.describeError(error) }),
        el('p', { class: 'muted', text: 'Messages hold patient data: the EMR team (interface role) opens and replays them.' }));
      return;
    }
    const facts = el('dl', { class: 'detail' },
      el('dt', { text: 'Status' }), el('dd', { id: 'hl7-status', text: STATUS_TEXT[m.status] || m.status }),
      el('dt', { text: 'Why' }), el('dd', { id: 'hl7-reason', text: m.reason || why(m) }),
      el('dt', { text: 'Received' }), el('dd', { text: when(m.created) }),
      el('dt', { text: 'From' }), el('dd', { text: [m.peer, m.address].filter(Boolean).join(', ') }),
      el('dt', { text: 'Control id and event' }), el('dd', { text: `${m.control_id || '—'} ${m.event || ''}` }),
      el('dt', { text: 'Appointment' }), el('dd', { text: m.appointment_id ? `Appointment/${m.appointment_id}` : '—' }),
      el('dt', { text: 'Attempts' }), el('dd', { text: String(m.attempts ?? 0) }));
    const parts = [facts];
    if (m.warning_texts?.length) {
      parts.push(el('h3', { text: 'Warnings' }),
        el('ul', {}, ...m.warning_texts.map((w) => el('li', { text: w }))));
    }
    parts.push(el('h3', { text: 'Message' }), el('pre', { class: 'hl7', tabindex: '0', 'aria-label': 'The message, one segment a line', text: m.message }));
    if (m.ack) parts.push(el('h3', { text: 'Acknowledgement' }), el('pre', { class: 'hl7', tabindex: '0', 'aria-label': 'The acknowledgement', text: m.ack }));
    const result = el('p', { id: 'hl7-replay-result', role: 'status' });
    if (m.direction === 'in' && (m.status === 'failed' || m.status === 'received')) {
      const replay = el('button', { type: 'button', id: 'hl7-replay', text: 'Replay' });
      replay.addEventListener('click', () => replayMessage(m.id, replay, result));
      parts.push(el('div', { class: 'row' }, replay, el('span', { class: 'muted',
        text: 'Applies the message again, as `fhir-sched hl7 replay` does: fix its cause first.' })));
    }
    parts.push(result);
    showDetail(`Message ${m.control_id || m.id}`, ...parts);
  }

  async function replayMessage(id, button, result) {
    button.disabled = true;
    result.className = '';
    result.textContent = 'Replaying…';
    try {
      const m = await api.post(`/hl7/messages/${encodeURIComponent(id)}/replay`);
      if (m.status === 'applied') {
        result.className = 'ok-text';
        result.textContent = `Applied${m.warning_texts?.length ? ` with warnings: ${m.warning_texts.join('; ')}` : ''}.`;
      } else {
        result.className = 'error-text';
        result.textContent = `Still ${STATUS_TEXT[m.status]?.toLowerCase() || m.status}: ${m.reason || why(m)}. ` +
          'Fix the cause (the clinic file, or the EMR\'s data), then replay again.';
        button.disabled = false;
      }
      const status = detail.querySelector('#hl7-status');
      if (status) status.textContent = STATUS_TEXT[m.status] || m.status;
      await list(false);
    } catch (error) {
      result.className = 'error-text';
      result.textContent = ctx.describeError(error);
      button.disabled = false;
    }
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    detail.hidden = true;
    list(false).catch((error) => ctx.notify(ctx.describeError(error)));
  });
  more.addEventListener('click', () => list(true).catch((error) => ctx.notify(ctx.describeError(error))));
  await list(false);
}
