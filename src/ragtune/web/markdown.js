// Safe Markdown for answers: paragraphs, headings, lists, block quotes, fenced code, **bold**,
// *italic*, `code`, [links](https://…) and [n] citation markers.
//
// Hand-written on purpose: the UI has no build step and no dependencies, and an answer is
// model output over uploaded documents, so it is untrusted. Nothing here parses HTML: every
// piece of text becomes a text node and every element is made with createElement, so markup in
// an answer (<script>, <img onerror=…>) is shown as the characters it is. Links keep only
// http(s) targets; anything else (javascript:, data:) stays plain text.
//
// It renders partial text too (called again as each token streams in): an unclosed code fence
// is code so far, and a [n] marker becomes a citation chip as soon as its "]" arrives.

const FENCE = /^\s{0,3}(```|~~~)\s*([\w+-]*)\s*$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const CITATION = /^\[(\d{1,4}(?:\s*,\s*\d{1,4})*)\]/;
const LINK = /^\[([^\]\n]+)\]\(\s*([^\s()]+)\s*\)/;
const SAFE_URL = /^https?:\/\/[^\s]+$/i;
const ESCAPABLE = /[\\`*_[\]()#+\-.!>~|]/;

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

// The answer `text` as a DocumentFragment; `citation(n)` makes the node for marker [n].
export function renderMarkdown(text, citation) {
  const fragment = document.createDocumentFragment();
  const lines = String(text || "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = line.match(FENCE);
    if (fence) {
      const code = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) code.push(lines[i++]);
      i += 1; // the closing fence (or past the end while it is still streaming)
      const pre = el("pre", "md-code");
      const body = el("code");
      if (fence[2]) body.dataset.language = fence[2];
      body.textContent = code.join("\n");
      pre.append(body);
      fragment.append(pre);
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      // Not <h3>: an answer's headings are no part of the page's outline.
      const p = el("p", `md-heading md-h${heading[1].length}`);
      const strong = el("strong");
      inline(heading[2], strong, citation);
      p.append(strong);
      fragment.append(p);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      fragment.append(el("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(lines[i++].match(QUOTE)[1]);
      const quote = el("blockquote", "md-quote");
      quote.append(renderMarkdown(quoted.join("\n"), citation));
      fragment.append(quote);
      continue;
    }
    if (BULLET.test(line) || NUMBERED.test(line)) {
      i = list(lines, i, fragment, citation);
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) paragraph.push(lines[i++].trim());
    const p = el("p");
    paragraph.forEach((part, n) => {
      if (n) p.append(el("br"));
      inline(part, p, citation);
    });
    fragment.append(p);
  }
  return fragment;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || QUOTE.test(line) || BULLET.test(line) || NUMBERED.test(line);
}

// One list (bullets or numbers, decided by its first item); indented lines continue an item.
function list(lines, i, fragment, citation) {
  const numbered = !BULLET.test(lines[i]);
  const pattern = numbered ? NUMBERED : BULLET;
  const node = el(numbered ? "ol" : "ul", "md-list");
  const first = lines[i].match(NUMBERED);
  if (numbered && first[1] !== "1") node.start = Number(first[1]);
  let item = null;
  while (i < lines.length) {
    const line = lines[i];
    const match = line.match(pattern);
    if (match) {
      item = el("li");
      inline(match[numbered ? 2 : 1], item, citation);
      node.append(item);
    } else if (line.trim() && /^\s/.test(line) && item) {
      item.append(el("br"));
      inline(line.trim(), item, citation);
    } else if (!line.trim() && i + 1 < lines.length && pattern.test(lines[i + 1])) {
      // a blank line between two items keeps the list going
    } else {
      break;
    }
    i += 1;
  }
  fragment.append(node);
  return i;
}

// Inline Markdown of `text` appended to `parent`.
function inline(text, parent, citation) {
  let plain = "";
  const flush = () => {
    if (plain) parent.append(document.createTextNode(plain));
    plain = "";
  };
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    if (ch === "\\" && ESCAPABLE.test(text[i + 1] || "")) {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    if (ch === "`") {
      const ticks = text.slice(i).match(/^`+/)[0];
      const end = text.indexOf(ticks, i + ticks.length);
      if (end >= 0) {
        flush();
        const code = el("code");
        code.textContent = text.slice(i + ticks.length, end);
        parent.append(code);
        i = end + ticks.length;
        continue;
      }
    }
    if (ch === "[") {
      const rest = text.slice(i);
      const cite = rest.match(CITATION);
      if (cite) {
        flush();
        cite[1].split(",").forEach((n) => parent.append(citation(Number(n.trim()))));
        i += cite[0].length;
        continue;
      }
      const link = rest.match(LINK);
      if (link) {
        flush();
        if (SAFE_URL.test(link[2])) {
          const a = el("a");
          a.href = link[2];
          a.rel = "noopener noreferrer nofollow";
          a.target = "_blank";
          inline(link[1], a, citation);
          parent.append(a);
        } else {
          inline(link[1], parent, citation); // an unsafe target: the label alone, as text
        }
        i += link[0].length;
        continue;
      }
    }
    if (ch === "*" || ch === "_") {
      const double = text[i + 1] === ch;
      const marker = double ? ch + ch : ch;
      const start = i + marker.length;
      const opens = start < text.length && !/\s/.test(text[start]) && (ch === "*" || !/\w/.test(text[i - 1] || ""));
      const end = opens ? closing(text, marker, start) : -1;
      if (end > start) {
        flush();
        const node = el(double ? "strong" : "em");
        inline(text.slice(start, end), node, citation);
        parent.append(node);
        i = end + marker.length;
        continue;
      }
    }
    plain += ch;
    i += 1;
  }
  flush();
}

// Where the emphasis opened with `marker` closes, or -1.
function closing(text, marker, from) {
  let j = text.indexOf(marker, from);
  while (j >= 0) {
    const single = marker.length === 1;
    const doubled = single && text[j + 1] === marker; // "**" inside "*…*" belongs to a strong
    const flanked = !/\s/.test(text[j - 1]) && (marker[0] === "*" || !/\w/.test(text[j + marker.length] || ""));
    if (doubled) {
      const inner = text.indexOf(marker + marker, j + 2);
      j = inner < 0 ? -1 : text.indexOf(marker, inner + 2);
      continue;
    }
    if (flanked) return j;
    j = text.indexOf(marker, j + 1);
  }
  return -1;
}
