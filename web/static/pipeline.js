/* lmserve playground: the pipeline view of one generated token.
 *
 * Draws one step of a "sampler_trace" (openapi.yaml, SamplerTraceStep) as the server sent
 * it: one panel per stage that ran, in the order applied, each candidate a bar (a logit
 * through the warpers, a probability after softmax), tokens a stage dropped greyed out
 * with −∞, the survivors counted, the stage's argmax marked; then where the draw's coin
 * landed on the final distribution (or, for greedy, that the argmax was taken).  It only
 * reads the trace: no sampling is redone here.  Loaded before app.js, which calls
 * renderPipeline(); it uses app.js's el(), showToken() and pct() (one global scope). */
'use strict';

const STAGE_LABELS = {
  logits: 'Raw logits',
  constraint: 'Format (grammar mask)',
  logit_bias: 'Logit bias',
  repetition_penalty: 'Repetition penalty',
  presence_frequency: 'Presence / frequency penalties',
  temperature: 'Temperature',
  top_k: 'Top-k',
  top_p: 'Top-p',
  min_p: 'Min-p',
  softmax: 'Softmax',
};

/* The stage's setting, as the column sent it, for its panel title. */
function stageSetting(name, s) {
  if (!s) return '';
  switch (name) {
    case 'temperature': return `T = ${s.temperature}`;
    case 'top_k': return `k = ${s.top_k}`;
    case 'top_p': return `p = ${s.top_p}`;
    case 'min_p': return `min_p = ${s.min_p}`;
    case 'repetition_penalty':
      return `× ${s.repetition_penalty}` + (s.penalty_last_n ? `, last ${s.penalty_last_n} tokens` : ', whole text');
    case 'logit_bias': {
      const n = s.logit_bias ? Object.keys(s.logit_bias).length : 0;
      return `${n} token${n === 1 ? '' : 's'}`;
    }
    default: return '';
  }
}

function fmtLogit(v) {
  if (v === null) return '−∞';
  const a = Math.abs(v);
  return (a >= 100 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toPrecision(3)).replace('-', '−');
}

/* Candidate indices of a stage, best first: by value, equal values by id, dropped last. */
function orderOf(values, ids) {
  const idx = values.map((_, i) => i);
  idx.sort((a, b) => {
    const x = values[a], y = values[b];
    if (x === null || y === null) return (x === null) - (y === null) || ids[a] - ids[b];
    return y - x || ids[a] - ids[b];
  });
  return idx;
}

/* One step's pipeline into box (emptied first).
 *   step:  one element of a choice's sampler_trace
 *   info:  { index, total, settings } -- the step's place in the generation and the
 *          sampler settings the column sent (for the panel titles) */
function renderPipeline(box, step, info) {
  box.textContent = '';
  const cands = step.candidates;
  const ids = cands.map((c) => c.id);
  const chosen = step.draw.token;
  const ci = ids.indexOf(chosen);
  const ran = step.stages.filter((s) => !s.skipped);
  const skipped = step.stages.filter((s) => s.skipped);

  /* One scale for every logit panel of the step, so temperature's stretch and the
   * penalties' shifts show as changes in length. */
  let lo = Infinity, hi = -Infinity;
  for (const s of ran) {
    if (s.name === 'softmax') continue;
    for (const v of s.values) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  }
  const span = hi > lo ? hi - lo : 1;
  const floor = lo - span * 0.08; /* the lowest finite value still gets a visible bar */

  const head = el('p', { class: 'pipe-head' });
  head.append(el('strong', {}, `Step ${info.index + 1} of ${info.total}`), ': ',
    el('span', { class: 'mono' }, `"${showToken(cands[ci].token)}"`));
  if (step.draw.method === 'argmax') head.append(' · greedy (argmax)');
  else head.append(` · drawn with probability ${pct(step.draw.probability)}`);
  box.append(head);

  const grid = el('div', { class: 'stages' });
  let prevSurvivors = null;
  for (const s of ran) {
    const isProb = s.name === 'softmax';
    const panel = el('section', { class: 'stage', 'data-stage': s.name });
    const title = el('h4', {}, STAGE_LABELS[s.name] || s.name);
    const setting = stageSetting(s.name, info.settings);
    if (setting) title.append(' ', el('span', { class: 'stage-setting' }, setting));
    panel.append(title);
    const surv = el('p', { class: 'survivors', 'data-survivors': s.survivors },
      `${s.survivors} ${isProb ? 'with probability > 0' : 'survive'}` +
      (prevSurvivors !== null && prevSurvivors !== s.survivors ? ` (of ${prevSurvivors})` : ''));
    panel.append(surv);
    prevSurvivors = s.survivors;

    const order = orderOf(s.values, ids);
    const top = order.length && s.values[order[0]] !== null ? order[0] : -1;
    const list = el('ol', { class: 'bars' });
    for (const i of order) {
      const v = s.values[i];
      const dropped = v === null || (isProb && v === 0);
      const li = el('li', {
        class: ['bar-row', dropped ? 'dropped' : '', i === ci ? 'chosen' : '', i === top ? 'argmax' : '']
          .filter(Boolean).join(' '),
        'data-id': ids[i],
      });
      const w = dropped ? 0 : isProb ? v * 100 : ((v - floor) / (hi - floor)) * 100;
      const bar = el('span', { class: 'pbar', style: `--w:${Math.max(dropped ? 0 : 1, Math.min(100, w)).toFixed(1)}%` });
      const label = el('span', { class: 'tok-label mono', title: `token ${ids[i]}` });
      if (i === top) label.append(el('span', { class: 'mark-max', title: 'the largest value at this stage' }, '★'));
      label.append(showToken(cands[i].token));
      if (i === top) label.append(el('span', { class: 'sr-only' }, ' (largest)'));
      if (i === ci) label.append(el('span', { class: 'sr-only' }, ' (chosen)'));
      li.append(label, bar, el('span', { class: 'val' }, isProb ? pct(v) : fmtLogit(v)));
      list.append(li);
    }
    panel.append(list);
    grid.append(panel);
  }
  box.append(grid);

  /* The draw. */
  const draw = el('section', { class: 'draw' });
  if (step.draw.method === 'argmax') {
    draw.append(el('h4', {}, 'Greedy'),
      el('p', {}, 'Temperature 0: the token with the largest logit after the penalties is taken; ' +
        'temperature, the filters, softmax and the draw do not run.'));
  } else {
    draw.append(el('h4', {}, 'The draw'));
    const cb = step.draw.cdf_before;
    const line = el('div', { class: 'cdf', role: 'img',
      'aria-label': `The coin ${step.draw.coin.toFixed(4)} lands in the interval of "${showToken(cands[ci].token)}"` });
    const probs = (ran.find((s) => s.name === 'softmax') || { values: [] }).values;
    cands.forEach((c, i) => {
      if (cb[i] === null || !(probs[i] > 0)) return;
      line.append(el('span', {
        class: 'seg' + (i === ci ? ' chosen' : ''),
        style: `left:${(cb[i] * 100).toFixed(3)}%;width:${Math.max(0.2, probs[i] * 100).toFixed(3)}%`,
        title: `"${showToken(c.token)}" [${cb[i].toFixed(4)}, ${(cb[i] + probs[i]).toFixed(4)})`,
      }));
    });
    line.append(el('span', { class: 'coin', style: `left:${(step.draw.coin * 100).toFixed(3)}%` }));
    draw.append(line);
    const start = cb[ci];
    draw.append(el('p', { class: 'draw-text' },
      `Coin ${step.draw.coin.toFixed(4)} → "${showToken(cands[ci].token)}", whose interval is ` +
      `[${start.toFixed(4)}, ${(start + step.draw.probability).toFixed(4)}) ` +
      '(the survivors in token-id order; other survivors fill the gaps).'));
  }
  box.append(draw);

  box.append(el('p', { class: 'legend-line' },
    '★ the largest value at a stage · orange: the chosen token · struck out: dropped (−∞, probability 0)'));
  if (skipped.length) {
    box.append(el('p', { class: 'skipped' },
      'Skipped (off for this request' + (step.draw.method === 'argmax' ? ', or after the argmax' : '') + '): ' +
      skipped.map((s) => STAGE_LABELS[s.name] || s.name).join(', ')));
  }

}
