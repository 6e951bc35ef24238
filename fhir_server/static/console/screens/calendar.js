// The calendar screen (placeholder until the FullCalendar view lands).
export async function render(root, ctx) {
  root.innerHTML = '<h1 id="calendar-title">Calendar</h1><p class="muted">Today\'s appointments ' +
    'for each clinician and room.</p>';
  await ctx.api.get('Appointment', { _count: 1 });
}
