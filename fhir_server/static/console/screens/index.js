// The console's screens, in menu order. Each module exports `render(root, ctx)` (see
// docs/console.md); `allowed(grants)` says whether the signed-in user's token can use it, and
// only decides what the menu shows: the server refuses what the token does not allow anyway.
export const SCREENS = [
  {
    id: 'calendar',
    title: 'Calendar',
    module: './screens/calendar.js',
    allowed: (g) => g.can('Appointment', 'r'),
  },
  {
    id: 'handovers',
    title: 'Handovers',
    module: './screens/handovers.js',
    allowed: (g) => g.can('Communication', 'r'),
  },
  {
    id: 'hl7',
    title: 'HL7 messages',
    module: './screens/hl7.js',
    // no scope names the HL7 doors (roles interface and front-desk may list): ask the server
    allowed: () => true,
    probe: (api) => api.get('/hl7/messages', { _count: 1 }),
  },
  {
    id: 'audit',
    title: 'Audit',
    module: './screens/audit.js',
    allowed: (g) => g.can('AuditEvent', 'r'),
  },
];
