// The calendar: a day or week of appointments for one practitioner or one location
// (FullCalendar, vendored), free times from Appointment/$find, and booking, moving and
// cancelling through Appointment/$book, so the clinic's rules and the double-booking guard
// decide. A time someone else took first (409) is said in words and the views are refreshed.

const RISK_URL = 'urn:fhir-sched:StructureDefinition/no-show-risk';
const HIDDEN_STATUSES = new Set(['cancelled', 'entered-in-error']);

const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
};

const two = (n) => String(n).padStart(2, '0');

/** A Date as an ISO dateTime with the browser's offset (what $find needs). */
function withOffset(d) {
  const minutes = -d.getTimezoneOffset();
  const sign = minutes >= 0 ? '+' : '-';
  const abs = Math.abs(minutes);
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}T${two(d.getHours())}:` +
    `${two(d.getMinutes())}:00${sign}${two(Math.floor(abs / 60))}:${two(abs % 60)}`;
}

function dayInput(d) {
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}`;
}

function when(iso) {
  return new Date(iso).toLocaleString([], {
    weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit',
  });
}

function personName(resource) {
  const name = (resource?.name || [])[0] || {};
  return [...(name.prefix || []), ...(name.given || []), name.family].filter(Boolean).join(' ') ||
    resource?.id || 'unknown';
}

function actor(appt, type) {
  return (appt.participant || []).find((p) => (p.actor?.reference || '').startsWith(`${type}/`));
}

/** The no-show risk extension as {score, reasons}, or null. */
export function risk(appt) {
  const ext = (appt.extension || []).find((e) => e.url === RISK_URL);
  if (!ext) return null;
  const subs = ext.extension || [];
  const score = subs.find((s) => s.url === 'score')?.valueDecimal;
  const reasons = subs.filter((s) => s.url === 'reason').map((s) => s.valueString);
  return typeof score === 'number' ? { score, reasons } : null;
}

function visitType(appt) {
  const concept = (appt.serviceType || [])[0] || {};
  const coding = (concept.coding || [])[0] || {};
  return { code: coding.code, text: concept.text || coding.display || coding.code || 'visit' };
}

export async function render(root, ctx) {
  const { api } = ctx;
  const state = { by: 'practitioner', who: '', patients: new Map(), patient: null, moving: null };

  const [practitioners, locations, services] = await Promise.all([
    api.all('Practitioner', { _count: 100 }),
    api.all('Location', { _count: 100 }),
    api.all('HealthcareService', { _count: 100 }),
  ]);
  const names = new Map([
    ...practitioners.map((p) => [`Practitioner/${p.id}`, personName(p)]),
    ...locations.map((l) => [`Location/${l.id}`, l.name || l.id]),
  ]);
  state.who = practitioners[0] ? `Practitioner/${practitioners[0].id}` : '';

  // -- the controls and the layout --------------------------------------------------------
  const bySelect = el('select', { id: 'cal-by' },
    el('option', { value: 'practitioner', textContent: 'Practitioner' }),
    el('option', { value: 'location', textContent: 'Location' }));
  const whoSelect = el('select', { id: 'cal-who' });
  const fillWho = () => {
    const list = state.by === 'practitioner'
      ? practitioners.map((p) => [`Practitioner/${p.id}`, personName(p)])
      : locations.map((l) => [`Location/${l.id}`, l.name || l.id]);
    whoSelect.replaceChildren(...list.map(([value, text]) => el('option', { value, textContent: text })));
    state.who = list[0]?.[0] || '';
  };
  fillWho();
  const calendarEl = el('div', { id: 'calendar', className: 'calendar' });
  const detail = el('section', { className: 'panel', id: 'appt-detail', hidden: true });
  detail.setAttribute('aria-live', 'polite');
  const finder = el('section', { className: 'panel', id: 'finder' });
  finder.setAttribute('aria-labelledby', 'finder-title');

  root.append(
    el('h1', { id: 'calendar-title', textContent: 'Calendar' }),
    el('div', { className: 'cal-controls' },
      el('label', {}, 'Show', bySelect),
      el('label', {}, 'Whose calendar', whoSelect)),
    el('p', { className: 'legend muted' },
      '✓ the patient confirmed · ? not confirmed yet · ⚠ no-show risk (dashed border); ' +
      'choose an appointment for its details.'),
    el('div', { className: 'cal-layout' }, calendarEl, el('div', {}, detail, finder)),
  );

  // -- the calendar ----------------------------------------------------------------------
  const calendar = new window.FullCalendar.Calendar(calendarEl, {
    initialView: 'timeGridDay',
    headerToolbar: { left: 'prev,next today', center: 'title', right: 'timeGridDay,timeGridWeek' },
    buttonIcons: false, // its icon font's glyphs have no text alternative (axe: role-img-alt)
    buttonText: { prev: '‹ Previous', next: 'Next ›', today: 'Today', day: 'Day', week: 'Week' },
    slotMinTime: '07:00:00',
    slotMaxTime: '19:00:00',
    allDaySlot: false,
    nowIndicator: true,
    height: 'auto',
    expandRows: true,
    eventSources: [{ events: loadEvents }],
    eventClick: (info) => { info.jsEvent.preventDefault(); showDetail(info.event.extendedProps.appt); },
    eventContent: (arg) => ({ domNodes: eventNodes(arg.event) }),
    eventDidMount: (info) => {
      const appt = info.event.extendedProps.appt;
      info.el.setAttribute('aria-label', eventLabel(appt));
      info.el.setAttribute('role', 'button');
      info.el.tabIndex = 0;
      info.el.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); showDetail(appt); }
      });
    },
  });

  async function loadEvents(info, success, failure) {
    try {
      const appts = await api.all('Appointment', [
        ['date', `ge${withOffset(info.start)}`],
        ['date', `lt${withOffset(info.end)}`],
        [state.by, state.who],
        ['_count', '100'],
      ]);
      const shown = appts.filter((a) => !HIDDEN_STATUSES.has(a.status));
      await learnPatients(shown);
      success(shown.map((a) => ({
        id: a.id,
        start: a.start,
        end: a.end,
        title: patientOf(a),
        classNames: ['appt', `appt-${a.status}`, ...(risk(a)?.score >= 0.3 ? ['appt-risk'] : [])],
        extendedProps: { appt: a },
      })));
    } catch (error) {
      ctx.notify(ctx.describeError(error));
      failure(error);
    }
  }

  async function learnPatients(appts) {
    const wanted = [...new Set(appts.map((a) => actor(a, 'Patient')?.actor.reference)
      .filter((r) => r && !state.patients.has(r)))];
    if (!wanted.length) return;
    const found = await api.all('Patient', { _id: wanted.map((r) => r.split('/')[1]).join(',') });
    for (const p of found) state.patients.set(`Patient/${p.id}`, p);
  }

  function patientOf(appt) {
    const ref = actor(appt, 'Patient')?.actor.reference;
    return ref ? personName(state.patients.get(ref)) || ref : 'no patient';
  }

  function confirmed(appt) {
    return actor(appt, 'Patient')?.status === 'accepted';
  }

  function eventLabel(appt) {
    const r = risk(appt);
    return `${when(appt.start)}, ${patientOf(appt)}, ${visitType(appt).text}, ${appt.status}, ` +
      `${confirmed(appt) ? 'confirmed' : 'not confirmed'}` +
      `${r ? `, no-show risk ${Math.round(r.score * 100)}%` : ''}`;
  }

  function eventNodes(event) {
    const appt = event.extendedProps.appt;
    const r = risk(appt);
    return [el('div', {},
      el('strong', { textContent: event.title }),
      el('span', { className: 'badge', textContent: confirmed(appt) ? '✓' : '?' }),
      r ? el('span', { className: 'badge', textContent: `⚠ ${Math.round(r.score * 100)}%` }) : null,
      el('div', { textContent: `${visitType(appt).text} · ${appt.status}` }))];
  }

  // -- one appointment -------------------------------------------------------------------
  function showDetail(appt) {
    const r = risk(appt);
    const practitioner = actor(appt, 'Practitioner')?.actor.reference;
    const location = actor(appt, 'Location')?.actor.reference;
    const rows = [
      ['Patient', patientOf(appt)],
      ['When', when(appt.start)],
      ['Visit', visitType(appt).text],
      ['With', [names.get(practitioner), names.get(location)].filter(Boolean).join(', ')],
      ['Status', appt.status],
      ['Patient confirmed', confirmed(appt) ? 'Yes' : 'Not yet'],
      ['No-show risk', r ? `${Math.round(r.score * 100)}%${r.reasons.length ? `: ${r.reasons.join('; ')}` : ''}` : 'Not scored'],
    ];
    const list = el('dl', { className: 'detail' });
    for (const [k, v] of rows) list.append(el('dt', { textContent: k }), el('dd', { textContent: v }));
    const move = el('button', { type: 'button', className: 'secondary', textContent: 'Move' });
    const cancel = el('button', { type: 'button', className: 'danger', textContent: 'Cancel appointment' });
    const actions = el('div', { className: 'cal-controls' }, move, cancel);
    move.addEventListener('click', () => startMove(appt));
    cancel.addEventListener('click', () => {
      const yes = el('button', { type: 'button', className: 'danger', textContent: 'Yes, cancel it' });
      const keep = el('button', { type: 'button', className: 'secondary', textContent: 'Keep it' });
      actions.replaceChildren(el('span', { textContent: 'Cancel this appointment?' }), yes, keep);
      yes.addEventListener('click', () => cancelAppointment(appt));
      keep.addEventListener('click', () => showDetail(appt));
      yes.focus();
    });
    detail.replaceChildren(el('h2', { id: 'detail-title', textContent: 'Appointment' }), list, actions);
    detail.hidden = false;
    move.focus();
  }

  async function cancelAppointment(appt) {
    try {
      await api.post('Appointment/$book', {
        resourceType: 'Parameters',
        parameter: [{ name: 'appointment-resource', resource: { ...appt, status: 'cancelled' } }],
      });
      ctx.notify(`Cancelled: ${patientOf(appt)}, ${when(appt.start)}.`, 'info');
      detail.hidden = true;
    } catch (error) {
      ctx.notify(ctx.describeError(error));
    }
    calendar.refetchEvents();
  }

  function startMove(appt) {
    const ref = actor(appt, 'Patient')?.actor.reference;
    state.moving = appt;
    state.patient = ref ? { ref, name: patientOf(appt) } : null;
    serviceSelect.value = visitType(appt).code || serviceSelect.value;
    dateInput.value = dayInput(new Date(appt.start));
    drawFinder();
    findButton.focus();
  }

  // -- finding a time and booking it -----------------------------------------------------
  const query = el('input', { id: 'patient-q', type: 'search', autocomplete: 'off' });
  query.dataset.draft = '';
  const matches = el('ul', { className: 'matches', id: 'patient-matches' });
  const serviceSelect = el('select', { id: 'find-visit' }, ...services.map((s) => el('option', {
    value: (s.type?.[0]?.coding?.[0]?.code) || s.id.replace(/^svc-/, ''),
    textContent: s.name || s.id,
  })));
  serviceSelect.dataset.draft = '';
  const dateInput = el('input', { id: 'find-date', type: 'date', value: dayInput(new Date()) });
  dateInput.dataset.draft = '';
  const findButton = el('button', { type: 'submit', textContent: 'Find free times' });
  const options = el('ul', { className: 'options', id: 'find-options' });
  const chosen = el('p', { className: 'chosen', id: 'find-patient' });

  const searchForm = el('form', { className: 'stack', role: 'search' },
    el('label', {}, 'Patient: name, birth date (YYYY-MM-DD) or phone', query),
    el('button', { type: 'submit', className: 'secondary', textContent: 'Search patients' }));
  searchForm.addEventListener('submit', (e) => { e.preventDefault(); searchPatients(); });
  const findForm = el('form', { className: 'stack' },
    el('label', {}, 'Visit type', serviceSelect),
    el('label', {}, 'Day', dateInput),
    findButton);
  findForm.addEventListener('submit', (e) => { e.preventDefault(); findTimes(); });

  function drawFinder() {
    const title = state.moving ? `Move ${state.patient?.name || 'the'}'s appointment` : 'Book a visit';
    const stop = state.moving
      ? el('button', { type: 'button', className: 'secondary', textContent: 'Stop moving' })
      : null;
    stop?.addEventListener('click', () => { state.moving = null; state.patient = null; drawFinder(); });
    chosen.textContent = state.patient ? `Patient: ${state.patient.name}` : 'No patient chosen yet.';
    const parts = [el('h2', { id: 'finder-title', textContent: title }),
      state.moving ? null : searchForm, state.moving ? null : matches, chosen, findForm, stop, options];
    finder.replaceChildren(...parts.filter(Boolean));
  }
  drawFinder();

  async function searchPatients() {
    const text = query.value.trim();
    if (!text) return;
    const param = /^\d{4}-\d{2}-\d{2}$/.test(text) ? 'birthdate'
      : /^[\d\s()+-]{3,}$/.test(text) ? 'phone' : 'name';
    try {
      const found = await api.all('Patient', { [param]: text, _count: 20 }, 20);
      matches.replaceChildren(...found.map((p) => {
        const label = `${personName(p)}, born ${p.birthDate || '?'}`;
        const b = el('button', { type: 'button', className: 'secondary', textContent: label });
        b.addEventListener('click', () => {
          state.patient = { ref: `Patient/${p.id}`, name: personName(p) };
          matches.replaceChildren();
          drawFinder();
          findButton.focus();
        });
        return el('li', {}, b);
      }));
      if (!found.length) matches.replaceChildren(el('li', { textContent: 'No patient matches. Check the spelling, or search by birth date or phone.' }));
      matches.querySelector('button')?.focus();
    } catch (error) {
      ctx.notify(ctx.describeError(error));
    }
  }

  async function findTimes() {
    if (!state.patient) { ctx.notify('Choose the patient first: search by name, birth date or phone.'); query.focus(); return; }
    const [y, m, d] = dateInput.value.split('-').map(Number);
    const start = new Date(y, m - 1, d);
    const end = new Date(y, m - 1, d + 1);
    const where = state.by === 'practitioner' ? 'practitioner' : 'location-reference';
    try {
      const bundle = await api.get('Appointment/$find', [
        ['start', withOffset(start)], ['end', withOffset(end)],
        ['visit-type', serviceSelect.value], ['patient-reference', state.patient.ref],
        [where, state.who], ['_count', '12'],
      ]);
      const entries = bundle.entry || [];
      const offered = entries.filter((e) => e.search?.mode !== 'outcome').map((e) => e.resource);
      const why = entries.filter((e) => e.search?.mode === 'outcome')
        .flatMap((e) => (e.resource.issue || []).map((i) => i.details?.text)).filter(Boolean);
      options.replaceChildren(...offered.map((proposal) => {
        const doctor = names.get(actor(proposal, 'Practitioner')?.actor.reference) || '';
        const verb = state.moving ? 'Move to' : 'Book';
        const b = el('button', { type: 'button', textContent: `${verb} ${when(proposal.start)} ${doctor}`.trim() });
        b.addEventListener('click', () => book(proposal));
        return el('li', {}, b);
      }));
      if (!offered.length) options.replaceChildren(el('li', { textContent: `No free time that day. ${why.join(' ')} Try another day.` }));
      options.querySelector('button')?.focus();
    } catch (error) {
      ctx.notify(ctx.describeError(error));
    }
  }

  async function book(proposal) {
    const parameter = [{ name: 'appointment-resource', resource: proposal }];
    if (state.moving) parameter.push({ name: 'cancelled-appointment-id', valueId: state.moving.id });
    try {
      const booked = await api.post('Appointment/$book', { resourceType: 'Parameters', parameter });
      const verb = state.moving ? 'Moved' : 'Booked';
      ctx.notify(`${verb}: ${state.patient.name}, ${when(booked.start || proposal.start)}.`, 'info');
      state.moving = null;
      detail.hidden = true;
      options.replaceChildren();
      drawFinder();
      calendar.gotoDate(new Date(proposal.start));
    } catch (error) {
      if (error.status === 409) {
        ctx.notify(`That time was taken by another booking a moment ago. ${error.nextStep}`);
        await findTimes();
      } else {
        ctx.notify(ctx.describeError(error));
      }
    }
    calendar.refetchEvents();
  }

  bySelect.addEventListener('change', () => { state.by = bySelect.value; fillWho(); calendar.refetchEvents(); });
  whoSelect.addEventListener('change', () => { state.who = whoSelect.value; calendar.refetchEvents(); });
  calendar.render();
  return () => calendar.destroy();
}
