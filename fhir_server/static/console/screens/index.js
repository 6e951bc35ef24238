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
];
