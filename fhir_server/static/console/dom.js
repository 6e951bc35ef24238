// Small DOM helpers the screens share.

/** An element: `class` and `text` props set className and textContent, any other prop is an
 * attribute; null and undefined children are skipped. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** A table that may scroll sideways on a narrow screen: a named region that takes keyboard
 * focus, so it can be scrolled without a mouse (WCAG 2.1.1; axe scrollable-region-focusable). */
export function scrollable(label, table) {
  return el('div', { class: 'scroll', tabindex: '0', role: 'region', 'aria-label': label }, table);
}
