// Model output to HTML, safely: raw HTML in the Markdown is escaped (shown as text), images are not
// loaded, and the result goes through DOMPurify before it reaches the DOM. Needs the vendored
// marked and DOMPurify scripts loaded first.

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const markdown = new marked.Marked({
  gfm: true,
  renderer: {
    html: ({ text }) => escapeHtml(text), // raw HTML in model output is shown as text
    image: ({ href, text }) => escapeHtml(`![${text}](${href})`), // never load remote images
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

export function renderMarkdown(element, text) {
  element.innerHTML = DOMPurify.sanitize(markdown.parse(text), {
    USE_PROFILE: { html: true },
    FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select"],
  });
}
