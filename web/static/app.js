/* lmserve playground -- talks only to this server's public API:
 *   POST /v1/completions (stream: true, SSE "data:" lines, logprobs for the token view,
 *   sampler_trace for the pipeline view; response_format / choice / grammar from a
 *   column's Format control), POST /tokenize (a forced first token),
 *   GET /health, GET /v1/models.
 * No framework and no outside resources.  One "column" = one set of sampler settings and
 * its output; side-by-side mode runs 2-4 columns on the same prompt at once, each with its
 * own request and AbortController. */
'use strict';

/* ---- Sampler fields: ranges and the server's defaults (issue 4) --------------------- */

const SAMPLER_FIELDS = [
  { name: 'temperature', label: 'Temperature', kind: 'float', def: 1, min: 0, max: 5, step: 0.05,
    slider: [0, 2], hint: '0 = greedy; 0–5, default 1' },
  { name: 'top_k', label: 'Top-k', kind: 'int', def: 0, min: 0, max: 100000, step: 1,
    slider: [0, 100], hint: '0 = off; keep the k most likely' },
  { name: 'top_p', label: 'Top-p', kind: 'float', def: 1, min: 0, minExclusive: true, max: 1, step: 0.01,
    slider: [0.01, 1], hint: '(0, 1]; 1 = off' },
  { name: 'min_p', label: 'Min-p', kind: 'float', def: 0, min: 0, max: 1, step: 0.01,
    slider: [0, 1], hint: '[0, 1]; 0 = off; drop p < min_p × p_max' },
  { name: 'repetition_penalty', label: 'Repetition penalty', kind: 'float', def: 1, min: 0, minExclusive: true,
    max: 10, step: 0.01, slider: [0.5, 2], hint: '> 0; 1 = off, above 1 discourages repeats' },
  { name: 'penalty_last_n', label: 'Penalty window', kind: 'int', def: 0, min: 0, max: 100000, step: 1,
    hint: 'Last n tokens the penalty looks at; 0 = all' },
];

const PRESETS = [
  { id: 'defaults', label: 'Server defaults', values: {} },
  { id: 'greedy', label: 'Greedy', values: { temperature: 0 } },
  { id: 'top_p', label: 'Top-p 0.9', values: { top_p: 0.9 } },
  { id: 'top_k', label: 'Top-k 40', values: { top_k: 40 } },
  { id: 'hot', label: 'High temperature', values: { temperature: 1.5 } },
  /* Greedy the other way: keep one token, then draw from a distribution of one. */
  { id: 'top_k1', label: 'Top-k 1', values: { top_k: 1 } },
  { id: 'custom', label: 'Custom', values: null },
];
/* Presets given to columns 2-4 when they first appear. */
const NEW_COLUMN_PRESETS = ['defaults', 'top_p', 'top_k', 'hot'];

const MAX_COLUMNS = 4;
const MAX_STOPS = 4;

/* ---- Output formats: the constrained-decoding fields of a request ------------------------
 * Each column may restrict its output: any JSON object, JSON valid against a schema, one of
 * a list of strings, or a GBNF grammar.  `spec`: the text area's label, hint and first
 * content (each column keeps its own text per format while the user switches). */
const FORMATS = [
  { id: 'text', label: 'Text' },
  { id: 'json_object', label: 'JSON (any object)' },
  { id: 'json_schema', label: 'JSON Schema', spec: {
    label: 'JSON Schema',
    hint: 'The supported subset: type, properties, required, additionalProperties, items, min/maxItems, enum, const, anyOf, $ref, min/maxLength, pattern, ranges',
    text: JSON.stringify({
      type: 'object',
      properties: {
        name: { type: 'string', maxLength: 20 },
        age: { type: 'integer', minimum: 0, maximum: 120 },
        mood: { enum: ['happy', 'sad', 'curious'] },
      },
      required: ['name', 'age', 'mood'],
      additionalProperties: false,
    }, null, 2),
  } },
  { id: 'choice', label: 'Choice list', spec: {
    label: 'Choices', hint: 'The output is exactly one of these; one per line, \\n for a newline',
    text: ' yes\n no',
  } },
  { id: 'grammar', label: 'Grammar (GBNF)', spec: {
    label: 'GBNF grammar', hint: 'llama.cpp\'s format; "root" is the start rule',
    text: 'root ::= sentence (" " sentence){0,2}\nsentence ::= [A-Z] [a-z]{1,8} (" " [a-z]{1,8}){1,5} "."',
  } },
];

/* ---- Small helpers ------------------------------------------------------------------- */

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    e.setAttribute(k, v === true ? '' : String(v));
  }
  if (text !== undefined) e.textContent = text;
  return e;
}

function pct(p) {
  if (!(p >= 0)) return '?';
  if (p >= 0.001) return (p * 100).toFixed(1) + '%';
  if (p > 0) return (p * 100).toPrecision(2) + '%';
  return '0%';
}

/* Visible form of a token: spaces and newlines made readable in the detail panel. */
function showToken(t) {
  return JSON.stringify(t).slice(1, -1).replace(/ /g, '␣');
}

function probClass(p) {
  if (p >= 0.9) return 'p5';
  if (p >= 0.6) return 'p4';
  if (p >= 0.3) return 'p3';
  if (p >= 0.1) return 'p2';
  if (p >= 0.03) return 'p1';
  return 'p0';
}

/* Parse and check one number field.  Returns { value } or { error }. */
function readNumber(spec, raw) {
  const s = String(raw).trim();
  if (s === '') return { value: spec.def };
  const v = Number(s);
  if (!Number.isFinite(v)) return { error: `${spec.label} must be a number` };
  if (spec.kind === 'int' && !Number.isInteger(v)) return { error: `${spec.label} must be a whole number` };
  if (spec.minExclusive ? v <= spec.min : v < spec.min)
    return { error: `${spec.label} must be ${spec.minExclusive ? 'above' : 'at least'} ${spec.min}` };
  if (v > spec.max) return { error: `${spec.label} must be at most ${spec.max}` };
  return { value: v };
}

function setFieldError(input, errEl, msg) {
  if (msg) {
    input.setAttribute('aria-invalid', 'true');
    errEl.textContent = msg;
    errEl.hidden = false;
  } else {
    input.removeAttribute('aria-invalid');
    errEl.textContent = '';
    errEl.hidden = true;
  }
}

/* ---- Server-sent events over fetch ---------------------------------------------------
 * Yields the payload of each event (its "data:" lines joined by "\n").  Lines may end in
 * \n, \r\n or \r; comment lines (":") and other fields are ignored. */
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let m;
      while ((m = /\r\n|\n|\r/.exec(buf)) !== null) {
        /* A lone \r at the very end may be the first half of \r\n: wait for more. */
        if (m[0] === '\r' && m.index === buf.length - 1) break;
        const line = buf.slice(0, m.index);
        buf = buf.slice(m.index + m[0].length);
        if (line === '') {
          if (data.length) yield data.join('\n');
          data = [];
        } else if (line.startsWith('data:')) {
          data.push(line.slice(line[5] === ' ' ? 6 : 5));
        }
      }
    }
    if (buf.startsWith('data:')) data.push(buf.slice(buf[5] === ' ' ? 6 : 5));
    if (data.length) yield data.join('\n');
  } finally {
    reader.releaseLock();
  }
}

/* An error from the server, in OpenAI's shape or not, as one readable line. */
async function describeHttpError(res) {
  let text = '';
  try { text = await res.text(); } catch (_) { /* ignore */ }
  let msg = `HTTP ${res.status}${res.statusText ? ' ' + res.statusText : ''}`;
  try {
    const j = JSON.parse(text);
    if (j && j.error) return msg + ': ' + describeErrorObject(j.error);
  } catch (_) { /* not JSON */ }
  if (text) msg += ': ' + text.slice(0, 300);
  return msg;
}

function describeErrorObject(e) {
  if (typeof e === 'string') return e;
  let s = e.message || 'error';
  const extra = [];
  if (e.param) extra.push(`parameter: ${e.param}`);
  if (e.type) extra.push(e.type);
  if (e.code) extra.push(`code: ${e.code}`);
  if (extra.length) s += ` (${extra.join(', ')})`;
  return s;
}

/* ---- Page state ------------------------------------------------------------------------ */

const state = {
  columns: [],     /* Column objects */
  running: 0,
  promptEdited: false, /* the user typed in the prompt box (keeps the model's sample prompt out) */
};

function apiHeaders(json) {
  const h = {};
  if (json) h['Content-Type'] = 'application/json';
  const key = $('#api-key').value.trim();
  if (key) h['Authorization'] = 'Bearer ' + key;
  return h;
}

/* ---- One column: settings + output ------------------------------------------------------ */

class Column {
  constructor(index, presetId) {
    this.index = index;
    this.controller = null;
    this.tokens = [];          /* { token, p, alts: [[token, p], ...], merged, steps } for each span */
    this.pending = [];         /* tokens that carried no text yet */
    this.steps = [];           /* sampler_trace steps of the generation, in order */
    this.pendingSteps = [];    /* steps of the pending tokens */
    this.sent = null;          /* the sampler settings of the last run (pipeline panel titles) */
    this.bias = new Map();     /* token id -> its text: forbidden (logit_bias -100) in this column */
    this.forced = null;        /* { id, token }: the first generated token, chosen by hand */
    this.fragment = document.createDocumentFragment(); /* spans not yet in the page */
    this.hasTabStop = false;   /* the first token span is the list's one tab stop */
    this.statsText = null;     /* stats line waiting for the next flush */
    this.flushHandle = null;
    const root = $('#column-template').content.firstElementChild.cloneNode(true);
    this.root = root;
    root.id = `col-${index}`;
    const title = $('.column-title', root);
    title.id = `col-${index}-title`;
    title.textContent = `Column ${index + 1}`;
    root.setAttribute('aria-labelledby', title.id);

    const presetLabel = $('label[data-for="preset"]', root);
    const preset = $('select[data-name="preset"]', root);
    preset.id = `preset-${index}`;
    presetLabel.htmlFor = preset.id;
    for (const p of PRESETS) preset.append(el('option', { value: p.id }, p.label));
    preset.addEventListener('change', () => this.applyPreset(preset.value));
    this.preset = preset;

    this.inputs = {};
    const box = $('.sampler-fields', root);
    for (const spec of SAMPLER_FIELDS) box.append(this.buildField(spec));
    this.buildFormat(root);

    this.stats = $('.stats', root);
    this.stats.id = `stats-${index}`;
    this.output = $('[data-part="output"]', root);
    this.output.id = `output-${index}`;
    this.output.setAttribute('aria-label', `Output of column ${index + 1}`);
    this.promptEcho = $('.prompt-echo', root);
    this.completion = $('.completion', root);
    this.completion.id = `completion-${index}`;
    this.error = $('.error', root);
    this.error.id = `error-${index}`;
    this.detail = $('.token-detail', root);
    this.detail.id = `detail-${index}`;
    this.pipeline = $('.pipeline', root);
    this.pipeline.id = `pipeline-${index}`;
    this.pipeline.setAttribute('aria-label', `Pipeline view, column ${index + 1}`);
    this.biasBox = $('[data-part="bias"]', root);
    this.biasBox.id = `bias-${index}`;
    this.forcedBox = $('[data-part="forced"]', root);
    this.forcedBox.id = `forced-${index}`;

    this.completion.addEventListener('keydown', (ev) => this.onTokenKey(ev));
    /* Focus (click, Tab, arrows) selects a token: its detail and its pipeline; hovering
     * shows only the detail. */
    this.completion.addEventListener('focusin', (ev) => this.showDetail(ev.target, true));
    this.completion.addEventListener('mouseover', (ev) => this.showDetail(ev.target, false));
    this.completion.addEventListener('click', (ev) => {
      if (ev.target.classList.contains('tok')) ev.target.focus();
    });

    this.applyPreset(presetId);
  }

  buildField(spec) {
    const id = `${spec.name}-${this.index}`;
    const wrap = el('div', { class: 'field sampler-field' });
    const label = el('label', { for: id }, spec.label);
    const hintId = `${id}-hint`, errId = `${id}-err`;
    const input = el('input', {
      id, name: spec.name, type: 'number', min: spec.min, max: spec.max, step: spec.step,
      inputmode: spec.kind === 'int' ? 'numeric' : 'decimal',
      'aria-describedby': `${hintId} ${errId}`,
    });
    let slider = null;
    if (spec.slider) {
      /* The slider is a pointer convenience; keyboard users have the number box (Tab order). */
      slider = el('input', {
        type: 'range', min: spec.slider[0], max: spec.slider[1], step: spec.step,
        'aria-label': `${spec.label} slider, column ${this.index + 1}`, tabindex: -1,
      });
      slider.addEventListener('input', () => {
        input.value = slider.value;
        this.onEdit(spec);
      });
    }
    input.addEventListener('input', () => {
      if (slider && input.value !== '') slider.value = input.value;
      this.onEdit(spec);
    });
    const hint = el('p', { id: hintId, class: 'hint' }, spec.hint);
    const err = el('p', { id: errId, class: 'field-error', hidden: true });
    wrap.append(label, input);
    if (slider) wrap.append(slider);
    wrap.append(hint, err);
    this.inputs[spec.name] = { spec, input, slider, err };
    return wrap;
  }

  /* The Format control: a select, and a text area for the formats that need one. */
  buildFormat(root) {
    const i = this.index;
    const sel = $('select[data-name="format"]', root);
    sel.id = `format-${i}`;
    $('label[data-for="format"]', root).htmlFor = sel.id;
    for (const f of FORMATS) sel.append(el('option', { value: f.id }, f.label));
    const wrap = $('[data-part="format-spec"]', root);
    const area = $('textarea[data-name="format-spec"]', root);
    area.id = `format-spec-${i}`;
    const label = $('label[data-for="format-spec"]', root);
    label.htmlFor = area.id;
    const hint = $('[data-part="format-hint"]', root);
    hint.id = `format-hint-${i}`;
    const err = $('[data-part="format-err"]', root);
    err.id = `format-err-${i}`;
    area.setAttribute('aria-describedby', `${hint.id} ${err.id}`);
    this.format = { sel, wrap, area, label, hint, err, texts: {} };
    for (const f of FORMATS) if (f.spec) this.format.texts[f.id] = f.spec.text;
    let shown = 'text';
    sel.addEventListener('change', () => {
      if (this.format.texts[shown] !== undefined) this.format.texts[shown] = area.value;
      shown = sel.value;
      this.showFormat();
    });
    this.showFormat();
  }

  showFormat() {
    const f = FORMATS.find((x) => x.id === this.format.sel.value) || FORMATS[0];
    const ui = this.format;
    ui.wrap.hidden = !f.spec;
    setFieldError(ui.area, ui.err, null);
    if (!f.spec) return;
    ui.label.textContent = f.spec.label;
    ui.hint.textContent = f.spec.hint;
    ui.area.value = ui.texts[f.id];
  }

  /* The format's request fields ({} for text), or { error: input } with the message shown. */
  readFormat() {
    const ui = this.format;
    const id = ui.sel.value;
    const bad = (msg) => {
      setFieldError(ui.area, ui.err, msg);
      return { error: ui.area };
    };
    setFieldError(ui.area, ui.err, null);
    if (id === 'text') return { fields: {} };
    if (id === 'json_object') return { fields: { response_format: { type: 'json_object' } } };
    const text = ui.area.value;
    if (id === 'json_schema') {
      let schema;
      try { schema = JSON.parse(text); } catch (e) { return bad(`The schema is not JSON: ${e.message}`); }
      if (schema === null || (typeof schema !== 'object' && typeof schema !== 'boolean') || Array.isArray(schema))
        return bad('A schema is a JSON object (or true)');
      return { fields: { response_format: { type: 'json_schema', json_schema: { name: 'playground', schema } } } };
    }
    if (id === 'choice') {
      const choices = text.split(/\r?\n/).filter((s) => s !== '')
        .map((s) => s.replace(/\\n/g, '\n').replace(/\\t/g, '\t'));
      if (!choices.length) return bad('Write at least one choice');
      return { fields: { choice: choices } };
    }
    if (!text.trim()) return bad('Write a grammar with a root rule');
    return { fields: { grammar: text } };
  }

  hasFormat() {
    return this.format.sel.value !== 'text';
  }

  onEdit(spec) {
    this.preset.value = 'custom';
    this.validateField(this.inputs[spec.name]);
  }

  validateField(f) {
    const r = readNumber(f.spec, f.input.value);
    setFieldError(f.input, f.err, r.error);
    return r;
  }

  applyPreset(id) {
    const p = PRESETS.find((x) => x.id === id) || PRESETS[0];
    this.preset.value = p.id;
    if (!p.values) return;   /* "custom": keep whatever is there */
    for (const spec of SAMPLER_FIELDS) {
      const f = this.inputs[spec.name];
      const v = spec.name in p.values ? p.values[spec.name] : spec.def;
      f.input.value = String(v);
      if (f.slider) f.slider.value = String(v);
      setFieldError(f.input, f.err, null);
    }
  }

  /* The sampler part of the request body, or null (errors shown next to the fields). */
  readSettings() {
    const out = {};
    let firstBad = null;
    for (const spec of SAMPLER_FIELDS) {
      const r = this.validateField(this.inputs[spec.name]);
      if (r.error) { firstBad = firstBad || this.inputs[spec.name].input; continue; }
      out[spec.name] = r.value;
    }
    if (firstBad) {
      $('details.sampler', this.root).open = true;
      return { error: firstBad };
    }
    const fmt = this.readFormat();
    if (fmt.error) return { error: fmt.error };
    return { settings: Object.assign(out, fmt.fields) };
  }

  reset(prompt) {
    this.tokens = [];
    this.pending = [];
    this.steps = [];
    this.pendingSteps = [];
    this.pipeline.hidden = true;
    this.pipeline.textContent = '';
    delete this.pipeline.dataset.step;
    this.fragment = document.createDocumentFragment();
    this.hasTabStop = false;
    this.statsText = null;
    if (this.flushHandle !== null) cancelAnimationFrame(this.flushHandle);
    this.flushHandle = null;
    this.promptEcho.textContent = prompt;
    if (this.forced) {
      /* The forced token was sent as part of the prompt (ids); shown where it belongs. */
      this.promptEcho.append(el('mark', { class: 'forced-tok', title: 'first token, forced' }, this.forced.token));
    }
    this.completion.textContent = '';
    this.error.hidden = true;
    this.error.textContent = '';
    this.detail.hidden = true;
    this.detail.textContent = '';
    this.root.dataset.state = 'idle';
  }

  setState(s, text) {
    this.flush();
    this.root.dataset.state = s;
    this.output.setAttribute('aria-busy', s === 'running' ? 'true' : 'false');
    this.stats.textContent = text;
  }

  showError(msg) {
    this.error.textContent = msg;
    this.error.hidden = false;
  }

  /* Append one piece of streamed output (one SSE chunk's choice). */
  appendChunk(choice, tokenView) {
    const text = typeof choice.text === 'string' ? choice.text : '';
    const lp = choice.logprobs;
    const pieces = [];
    if (lp && Array.isArray(lp.tokens) && lp.tokens.length) {
      const toks = lp.tokens.map(String);
      const probs = (lp.token_logprobs || []).map((x) => (typeof x === 'number' ? Math.exp(x) : NaN));
      const tops = lp.top_logprobs || [];
      if (toks.join('') === text) {
        toks.forEach((t, i) => pieces.push({ text: t, token: t, p: probs[i], top: tops[i] }));
      } else {
        /* The server held back part of a multi-byte character, or tokens are not plain
         * text: one span for the chunk, described by its first token. */
        pieces.push({ text, token: toks[0], p: probs[0], top: tops[0], merged: toks });
      }
    } else if (text !== '') {
      pieces.push({ text, token: text, p: NaN, top: null });
    }
    /* The chunk's trace steps, one per token in order: the i-th goes with the i-th piece;
     * a step left over when the choice ends is its end-of-text token (no text, no
     * logprobs entry); otherwise it waits with the pending tokens. */
    const steps = [];
    for (const st of Array.isArray(choice.sampler_trace) ? choice.sampler_trace : []) {
      this.steps.push(st);
      steps.push(this.steps.length - 1);
    }
    pieces.forEach((pc, i) => { pc.steps = i < steps.length ? [steps[i]] : []; });
    const leftover = steps.slice(pieces.length);
    if (leftover.length && !choice.finish_reason) this.pendingSteps.push(...leftover);
    for (const pc of pieces) {
      if (pc.text === '') {
        /* A token with no complete character yet (e.g. the first byte of a multi-byte
         * character): shown together with the text that completes it. */
        this.pending.push(pc.token);
        this.pendingSteps.push(...pc.steps);
        continue;
      }
      if (this.pending.length) {
        pc.merged = this.pending.concat(pc.merged || [pc.token]);
        this.pending = [];
      }
      if (this.pendingSteps.length) {
        pc.steps = this.pendingSteps.concat(pc.steps);
        this.pendingSteps = [];
      }
      const alts = pc.top && typeof pc.top === 'object'
        ? Object.entries(pc.top).map(([t, l]) => [t, Math.exp(l)]).sort((a, b) => b[1] - a[1])
        : [];
      const i = this.tokens.length;
      this.tokens.push({ token: pc.token, p: pc.p, alts, merged: pc.merged, steps: pc.steps });
      const span = el('span', { 'data-i': i }, pc.text);
      if (tokenView && Number.isFinite(pc.p)) {
        span.className = 'tok ' + probClass(pc.p);
        span.title = `${pct(pc.p)}` + (alts.length
          ? ' · alternatives: ' + alts.slice(0, 5).map(([t, p]) => `"${showToken(t)}" ${pct(p)}`).join(', ')
          : '');
        span.tabIndex = this.hasTabStop ? -1 : 0;
        this.hasTabStop = true;
      }
      this.fragment.append(span);
    }
    if (leftover.length && choice.finish_reason && tokenView) {
      /* The model chose its end of text: a token with no text, selectable for its step. */
      const i = this.tokens.length;
      this.tokens.push({ token: '', p: NaN, alts: [], eos: true, steps: this.pendingSteps.concat(leftover) });
      this.pendingSteps = [];
      const span = el('span', { 'data-i': i, class: 'tok eos', title: 'end of text: the model chose its end-of-text token',
        'aria-label': 'end of text' });
      span.tabIndex = this.hasTabStop ? -1 : 0;
      this.hasTabStop = true;
      this.fragment.append(span);
    }
    this.scheduleFlush();
  }

  /* The DOM is touched at most once per frame: a small model streams thousands of
   * tokens a second, and a layout per token would freeze the page (and its Stop button). */
  scheduleFlush() {
    if (this.flushHandle === null) this.flushHandle = requestAnimationFrame(() => this.flush());
  }

  flush() {
    if (this.flushHandle !== null) cancelAnimationFrame(this.flushHandle);
    this.flushHandle = null;
    const o = this.output;
    /* Keep the newest text in view while streaming, unless the reader scrolled up. */
    const follow = o.scrollHeight - o.scrollTop - o.clientHeight < 8;
    if (this.fragment.childNodes.length) this.completion.append(this.fragment);
    if (this.statsText !== null) this.stats.textContent = this.statsText;
    this.statsText = null;
    if (follow) o.scrollTop = o.scrollHeight;
  }

  onTokenKey(ev) {
    const t = ev.target;
    if (!t.classList || !t.classList.contains('tok')) return;
    const all = Array.from(this.completion.querySelectorAll('.tok'));
    const i = all.indexOf(t);
    let j = -1;
    if (ev.key === 'ArrowRight' || ev.key === 'ArrowDown') j = Math.min(all.length - 1, i + 1);
    else if (ev.key === 'ArrowLeft' || ev.key === 'ArrowUp') j = Math.max(0, i - 1);
    else if (ev.key === 'Home') j = 0;
    else if (ev.key === 'End') j = all.length - 1;
    else if (ev.key === 'Escape') { this.detail.hidden = true; return; }
    if (j < 0) return;
    ev.preventDefault();
    t.tabIndex = -1;
    all[j].tabIndex = 0;
    all[j].focus();
  }

  /* The detail panel of a token span; select: also its pipeline (and, side by side,
   * the same step in the other columns). */
  showDetail(target, select) {
    if (!target || !target.classList || !target.classList.contains('tok')) return;
    const info = this.tokens[Number(target.dataset.i)];
    if (!info) return;
    for (const s of this.completion.querySelectorAll('.tok.current')) s.classList.remove('current');
    target.classList.add('current');
    const step = info.steps && info.steps.length ? this.steps[info.steps[0]] : null;
    const first = !!(info.steps && info.steps[0] === 0 && !this.forced);
    /* Token ids come from the trace's candidates (logprobs carry text only). */
    const idOf = (tok) => {
      const c = step && step.candidates.find((x) => x.token === tok);
      return c ? c.id : undefined;
    };
    const d = this.detail;
    d.textContent = '';
    const head = el('p', { class: 'detail-head' });
    if (info.eos) {
      head.append(el('strong', {}, 'End of text'), ': the model chose its end-of-text token' +
        (step ? ` (id ${step.draw.token})` : ''));
    } else {
      head.append(el('strong', {}, `"${showToken(info.token)}"`), ` ${pct(info.p)}`);
      if (info.merged) head.append(` (this text is the tokens ${info.merged.map((t) => `"${showToken(t)}"`).join(' ')})`);
    }
    d.append(head);
    const rows = info.alts.length ? info.alts
      : step ? step.candidates.map((c) => [c.token, NaN]) : [];
    if (rows.length) {
      const tbl = el('table', { class: 'alts' });
      tbl.append(el('caption', {}, 'Most likely tokens at this step'));
      const thead = el('tr');
      thead.append(el('th', { scope: 'col' }, 'Token'), el('th', { scope: 'col' }, 'Probability'));
      if (step) thead.append(el('th', { scope: 'col' }, 'Exercises'));
      tbl.append(thead);
      const chosenTok = step ? (step.candidates.find((c) => c.id === step.draw.token) || {}).token : info.token;
      for (const [tok, p] of rows) {
        const tr = el('tr', { class: tok === chosenTok ? 'chosen' : null, 'data-p': p });
        const td2 = el('td');
        if (Number.isFinite(p)) {
          td2.append(el('span', { class: 'bar', style: `--w:${Math.max(1, Math.round(p * 100))}%` }), pct(p));
        }
        tr.append(el('td', { class: 'mono' }, showToken(tok)), td2);
        if (step) {
          const td3 = el('td', { class: 'actions-cell' });
          const id = idOf(tok);
          if (id !== undefined) {
            const fb = el('button', { type: 'button', class: 'small', 'data-action': 'forbid', 'data-id': id,
              'aria-label': `Forbid "${showToken(tok)}" (token ${id}) in column ${this.index + 1} and regenerate` }, 'Forbid');
            fb.addEventListener('click', () => this.forbid(id, tok));
            td3.append(fb);
            if (first) {
              const sb = el('button', { type: 'button', class: 'small', 'data-action': 'force', 'data-id': id,
                'aria-label': `Start column ${this.index + 1} with "${showToken(tok)}" (token ${id}) and continue` }, 'Start with');
              sb.addEventListener('click', () => this.forceFirst(id, tok));
              td3.append(' ', sb);
            }
          }
          tr.append(td3);
        }
        tbl.append(tr);
      }
      d.append(tbl);
    }
    for (const b of d.querySelectorAll('button[data-action]')) b.disabled = state.running > 0;
    d.hidden = false;
    if (select) this.selectSpan(target, info);
  }

  selectSpan(target, info) {
    for (const s of this.completion.querySelectorAll('.tok.selected')) s.classList.remove('selected');
    target.classList.add('selected');
    if (!info.steps || !info.steps.length) return;
    const k = info.steps[0];
    this.showStep(k, false);
    if (state.columns.length > 1 && $('#sync-steps').checked) {
      for (const c of state.columns) if (c !== this) c.showStep(k, true);
    }
  }

  /* Step k of this column's generation in its pipeline panel.  peer: chosen in another
   * column (side by side); the token of that step is marked, focus stays where it is. */
  showStep(k, peer) {
    const box = this.pipeline;
    box.dataset.step = String(k);
    box.hidden = false;
    if (peer) {
      for (const s of this.completion.querySelectorAll('.tok.peer, .tok.selected')) s.classList.remove('peer', 'selected');
      const i = this.tokens.findIndex((t) => t.steps && t.steps.includes(k));
      const span = i >= 0 ? this.completion.querySelector(`[data-i="${i}"]`) : null;
      if (span) {
        span.classList.add('peer');
        this.showDetail(span, false); /* its detail too; focus stays in the other column */
      }
    }
    const st = this.steps[k];
    if (!st) {
      box.textContent = '';
      box.append(el('p', { class: 'hint' }, this.steps.length
        ? `This column has ${this.steps.length} traced step${this.steps.length === 1 ? '' : 's'}: no step ${k + 1}.`
        : 'No pipeline trace here: turn on the token view and the pipeline view, then generate.'));
      return;
    }
    renderPipeline(box, st, { index: k, total: this.steps.length, settings: this.sent });
  }

  /* ---- The course's exercises -------------------------------------------------------- */

  forbid(id, token) {
    if (state.running > 0) return;
    this.bias.set(id, token);
    this.renderChips();
    runColumns([this]);
  }

  forceFirst(id, token) {
    if (state.running > 0) return;
    this.forced = { id, token };
    this.renderChips();
    runColumns([this]);
  }

  /* The exercise settings as removable chips under the sampler fields. */
  renderChips() {
    const chip = (label, what, onRemove) => {
      const c = el('span', { class: 'chip' });
      c.append(label);
      const x = el('button', { type: 'button', class: 'chip-x', 'aria-label': `Remove ${what}` }, '✕');
      x.addEventListener('click', () => {
        onRemove();
        this.renderChips();
        this.preset.focus();
      });
      c.append(x);
      return c;
    };
    for (const c of this.root.querySelectorAll('.chips .chip')) c.remove();
    for (const [id, token] of this.bias) {
      const c = chip(`"${showToken(token)}" (id ${id}) −100`, `the logit bias on "${showToken(token)}" (token ${id})`,
        () => this.bias.delete(id));
      c.dataset.id = String(id);
      this.biasBox.append(c);
    }
    this.biasBox.hidden = this.bias.size === 0;
    if (this.forced) {
      const f = this.forced;
      const c = chip(`"${showToken(f.token)}" (id ${f.id})`, `the forced first token "${showToken(f.token)}"`,
        () => { this.forced = null; });
      c.dataset.id = String(f.id);
      this.forcedBox.append(c);
    }
    this.forcedBox.hidden = !this.forced;
    if (this.bias.size || this.forced) $('details.sampler', this.root).open = true;
  }

  /* The prompt's token ids as the server tokenizes a text prompt (BOS included). */
  async promptIds(prompt) {
    const res = await fetch('/tokenize', {
      method: 'POST', headers: apiHeaders(true), body: JSON.stringify({ content: prompt }),
      signal: this.controller.signal, cache: 'no-store',
    });
    if (!res.ok) throw new Error(await describeHttpError(res));
    const j = await res.json();
    if (!j || !Array.isArray(j.tokens)) throw new Error('the server sent no tokens for the prompt');
    return j.tokens;
  }

  /* Run one streaming completion with this column's settings. */
  async run(common, settings) {
    const tokenView = common.tokenView;
    const body = Object.assign({ prompt: common.prompt, max_tokens: common.max_tokens }, settings, {
      stream: true,
      stream_options: { include_usage: true },
    });
    if (common.seed !== null) body.seed = common.seed;
    if (common.stop.length) body.stop = common.stop;
    if (tokenView) body.logprobs = 5;
    if (tokenView && common.traceN > 0) body.sampler_trace = common.traceN;
    if (this.bias.size) body.logit_bias = Object.fromEntries([...this.bias.keys()].map((id) => [String(id), -100]));
    this.sent = Object.assign({}, settings, body.logit_bias ? { logit_bias: body.logit_bias } : {});

    this.reset(common.prompt);
    this.controller = new AbortController();
    this.setState('running', 'Waiting for the first token…');
    const t0 = performance.now();
    let tFirst = null, tLast = null, n = 0, finish = null, usage = null;
    const summary = (final) => {
      const parts = [];
      if (tFirst !== null) parts.push(`first token ${Math.round(tFirst - t0)} ms`);
      if (n > 1 && tLast > tFirst) {
        const rate = (n - 1) / ((tLast - tFirst) / 1000);
        parts.push(`${rate >= 100 ? Math.round(rate) : rate.toFixed(1)} tokens/s`);
      }
      parts.push(`${n} token${n === 1 ? '' : 's'}`);
      if (final) parts.push(`${Math.round(performance.now() - t0)} ms total`);
      if (finish) parts.push(`finish: ${finish}`);
      return parts.join(' · ');
    };
    try {
      /* A forced first token: the prompt goes as ids with the chosen token after it. */
      if (this.forced) body.prompt = (await this.promptIds(common.prompt)).concat([this.forced.id]);
      const res = await fetch('/v1/completions', {
        method: 'POST', headers: apiHeaders(true), body: JSON.stringify(body),
        signal: this.controller.signal, cache: 'no-store',
      });
      if (!res.ok) throw new Error(await describeHttpError(res));
      const ctype = res.headers.get('Content-Type') || '';
      if (!ctype.includes('text/event-stream')) {
        /* A server that ignored stream: true: take the whole response at once. */
        const j = await res.json();
        if (j.error) throw new Error(describeErrorObject(j.error));
        for (const c of j.choices || []) { this.appendChunk(c, tokenView); finish = c.finish_reason || finish; }
        tFirst = tLast = performance.now();
        n = (j.usage && j.usage.completion_tokens) || this.tokens.length;
      } else {
        for await (const data of sseData(res.body)) {
          if (data.trim() === '[DONE]') break;
          let j;
          try { j = JSON.parse(data); } catch (_) { throw new Error('the server sent an event that is not JSON: ' + data.slice(0, 200)); }
          if (j.error) throw new Error(describeErrorObject(j.error));
          if (j.usage) usage = j.usage;
          for (const c of j.choices || []) {
            const before = this.tokens.length;
            this.appendChunk(c, tokenView);
            const lpN = c.logprobs && Array.isArray(c.logprobs.tokens) ? c.logprobs.tokens.length : 0;
            const added = lpN || (this.tokens.length > before ? 1 : 0);
            if (added) {
              const now = performance.now();
              if (tFirst === null) tFirst = now;
              tLast = now;
              n += added;
            }
            if (c.finish_reason) finish = c.finish_reason;
          }
          this.statsText = summary(false);
          this.scheduleFlush();
        }
        if (usage && typeof usage.completion_tokens === 'number') n = usage.completion_tokens;
      }
      this.setState('done', summary(true));
    } catch (err) {
      if (err && err.name === 'AbortError') {
        this.setState('stopped', 'Stopped · ' + summary(true));
      } else {
        const msg = err && err.message ? err.message : String(err);
        this.setState('error', 'Failed · ' + summary(true));
        this.showError(err instanceof TypeError ? `Network error: ${msg}` : msg);
      }
    } finally {
      this.controller = null;
    }
  }

  stop() {
    if (this.controller) this.controller.abort();
  }
}

/* ---- The page ----------------------------------------------------------------------------- */

function setColumnCount(n) {
  n = Math.max(1, Math.min(MAX_COLUMNS, n));
  const box = $('#columns');
  while (state.columns.length > n) {
    const c = state.columns.pop();
    c.stop();
    c.root.remove();
  }
  while (state.columns.length < n) {
    const i = state.columns.length;
    const c = new Column(i, NEW_COLUMN_PRESETS[i]);
    state.columns.push(c);
    box.append(c.root);
  }
  box.dataset.count = String(n);
  $('#columns-count').value = String(n);
}

function readCommon() {
  let firstBad = null;
  const prompt = $('#prompt').value;

  const mt = $('#max-tokens');
  const mtR = readNumber({ label: 'Max tokens', kind: 'int', def: 64, min: 1, max: Number(mt.max) }, mt.value);
  setFieldError(mt, $('#max-tokens-err'), mtR.error);
  if (mtR.error) firstBad = firstBad || mt;

  const sd = $('#seed');
  let seed = null;
  if (sd.value.trim() !== '') {
    const r = readNumber({ label: 'Seed', kind: 'int', def: 0, min: 0, max: Number.MAX_SAFE_INTEGER }, sd.value);
    setFieldError(sd, $('#seed-err'), r.error);
    if (r.error) firstBad = firstBad || sd; else seed = r.value;
  } else {
    setFieldError(sd, $('#seed-err'), null);
  }

  const st = $('#stop-strings');
  const stop = st.value.split(/\r?\n/).filter((s) => s !== '')
    .map((s) => s.replace(/\\n/g, '\n').replace(/\\t/g, '\t'));
  const stErr = stop.length > MAX_STOPS ? `At most ${MAX_STOPS} stop strings` : null;
  setFieldError(st, $('#stop-err'), stErr);
  if (stErr) firstBad = firstBad || st;

  if (firstBad) return { error: firstBad };
  return { common: { prompt, max_tokens: mtR.value, seed, stop, tokenView: $('#token-view').checked,
    traceN: Number($('#trace-n').value) || 0 } };
}

function updateButtons() {
  const busy = state.running > 0;
  $('#generate').disabled = busy;
  $('#stop').disabled = !busy;
  for (const b of document.querySelectorAll('.token-detail button[data-action]')) b.disabled = busy;
  document.body.dataset.running = busy ? 'true' : 'false';
}

/* Run the given columns (all of them for Generate; one to regenerate after an exercise). */
async function runColumns(cols) {
  if (state.running > 0) return;
  const c = readCommon();
  const settings = cols.map((col) => col.readSettings());
  let bad = c.error || (settings.find((s) => s.error) || {}).error;
  /* a constrained text ends where its format says: the server refuses stop strings beside it */
  const st = $('#stop-strings');
  if (!bad && c.common.stop.length && cols.some((col) => col.hasFormat())) {
    setFieldError(st, $('#stop-err'), 'Stop strings cannot be combined with a column\'s Format (the format decides where the text ends)');
    bad = st;
  }
  if (bad) {
    bad.focus();
    return;
  }
  $('#legend').classList.toggle('shown', c.common.tokenView);
  state.running = cols.length;
  updateButtons();
  await Promise.all(cols.map((col, i) =>
    col.run(c.common, settings[i].settings).finally(() => {
      state.running--;
      updateButtons();
    })));
}

function generate() {
  return runColumns(state.columns);
}

function stopAll() {
  for (const c of state.columns) c.stop();
}

async function checkServer() {
  const out = $('#server-status');
  const parts = [];
  try {
    const h = await fetch('/health', { cache: 'no-store' });
    parts.push(h.ok ? 'Server ready' : `Server not ready (HTTP ${h.status})`);
  } catch (_) {
    out.textContent = 'Server unreachable';
    out.dataset.ok = 'false';
    return;
  }
  try {
    const m = await fetch('/v1/models', { headers: apiHeaders(false), cache: 'no-store' });
    if (m.status === 401) {
      parts.push('an API key is required');
    } else if (m.ok) {
      const j = await m.json();
      const models = j.data || [];
      const ids = models.map((x) => x.id).filter(Boolean);
      if (ids.length) parts.push('model ' + ids.join(', '));
      const ctx = models.length ? models[0].context_length : undefined;
      /* Informational: the server slides its window when a sequence fills it, so
       * max tokens is bounded by the server's own limit, not by the context. */
      if (Number.isInteger(ctx) && ctx > 0) parts.push(`context ${ctx} tokens`);
      /* The model's own sample prompt (GGUF lmserve.sample_prompt) replaces the page's
       * fallback, unless the user has typed something already. */
      const sample = models.length ? models[0].sample_prompt : undefined;
      const box = $('#prompt');
      if (typeof sample === 'string' && sample && !state.promptEdited) box.value = sample;
    }
  } catch (_) { /* the models list is informational only */ }
  out.textContent = parts.join(' · ');
  out.dataset.ok = parts[0] === 'Server ready' ? 'true' : 'false';
}

function init() {
  setColumnCount(1);
  updateButtons();
  $('#run-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    generate();
  });
  $('#stop').addEventListener('click', stopAll);
  $('#columns-count').addEventListener('change', (ev) => setColumnCount(Number(ev.target.value)));
  $('#compare').addEventListener('click', () => {
    setColumnCount(3);
    ['greedy', 'top_p', 'top_k'].forEach((p, i) => state.columns[i].applyPreset(p));
  });
  /* The course's "greedy two ways": temperature 0 takes the argmax; top-k 1 at
   * temperature 1 keeps only the argmax and draws from a distribution of one. */
  $('#greedy-two-ways').addEventListener('click', () => {
    setColumnCount(2);
    ['greedy', 'top_k1'].forEach((p, i) => state.columns[i].applyPreset(p));
  });
  $('#prompt').addEventListener('input', () => { state.promptEdited = true; });
  $('#prompt').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      generate();
    }
  });
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && state.running > 0) {
      ev.preventDefault();
      stopAll();
    }
  });
  $('#token-view').addEventListener('change', (ev) => $('#legend').classList.toggle('shown', ev.target.checked));
  $('#legend').classList.toggle('shown', $('#token-view').checked);
  $('#api-key').addEventListener('change', checkServer);
  checkServer();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
