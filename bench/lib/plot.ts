// Plots for docs/benchmarks.md: Vega-Lite specs compiled with vega-lite and rendered to SVG
// by vega's headless renderer (no browser, no canvas, no native code), from the result JSON.
import * as vega from 'vega';
import * as vl from 'vega-lite';

const CONFIG = {
  background: 'white',
  font: 'Helvetica, Arial, sans-serif',
  axis: { labelFontSize: 11, titleFontSize: 12, gridColor: '#e6e6e6' },
  legend: { labelFontSize: 11, titleFontSize: 12, labelLimit: 260 },
  header: { labelFontSize: 12, titleFontSize: 12 },
  title: { fontSize: 14, anchor: 'start', subtitleFontSize: 11, subtitleColor: '#555' },
  view: { stroke: '#ccc' },
};

/** Renders a Vega-Lite spec (data inline) to an SVG document. */
export async function renderSvg(spec: Record<string, unknown>): Promise<string> {
  const full = { $schema: 'https://vega.github.io/schema/vega-lite/v6.json', config: CONFIG, ...spec } as vl.TopLevelSpec;
  const compiled = vl.compile(full).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    const svg = await view.toSVG();
    return svg.startsWith('<?xml') ? svg : `<?xml version="1.0" encoding="UTF-8"?>\n${svg}\n`;
  } finally {
    view.finalize();
  }
}

/** A bar per row with a min–max rule on it: the harness's usual "median (min–max)" picture. */
export function barsWithRange(o: {
  title: string; subtitle?: string; data: Array<Record<string, unknown>>;
  x: string; xTitle: string | null; y: string; yTitle: string; color?: string; colorTitle?: string;
  column?: string; columnTitle?: string; columnOrder?: string[]; xOrder?: string[];
  /** Bars of one x side by side by color (default); false when each x has one color anyway. */
  offset?: boolean; colorOrder?: string[]; yLog?: boolean; width?: number | { step: number }; height?: number;
  rule?: { y: number; label: string };
  independentY?: boolean;
}): Record<string, unknown> {
  const yScale = o.yLog ? { type: 'log' } : { zero: true };
  // A log scale has no room for zero, negative or missing values: such bars are left out,
  // and a range end that is not positive is pinned to the bar.
  const pos = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x) && x > 0;
  const data = o.yLog
    ? o.data.filter((d) => pos(d[o.y])).map((d) => ({ ...d, min: pos(d.min) ? d.min : d[o.y], max: pos(d.max) ? d.max : d[o.y] }))
    : o.data.filter((d) => typeof d[o.y] === 'number' && Number.isFinite(d[o.y] as number));
  const offset = o.color && o.offset !== false ? { xOffset: { field: o.color, sort: o.colorOrder ?? null } } : {};
  const layers: Array<Record<string, unknown>> = [
    {
      mark: { type: 'bar', tooltip: true },
      encoding: {
        x: { field: o.x, type: 'nominal', title: o.xTitle, sort: o.xOrder ?? null, axis: { labelAngle: -30, labelLimit: 400 } },
        y: { field: o.y, type: 'quantitative', title: o.yTitle, scale: yScale, stack: null },
        ...(o.color ? { color: { field: o.color, type: 'nominal', title: o.colorTitle ?? o.color, sort: o.colorOrder ?? null, legend: { labelLimit: 400 } } } : {}),
        ...offset,
      },
    },
    {
      mark: { type: 'rule', color: 'black', strokeWidth: 1.2 },
      encoding: {
        x: { field: o.x, type: 'nominal', sort: o.xOrder ?? null },
        ...offset,
        y: { field: 'min', type: 'quantitative' },
        y2: { field: 'max' },
      },
    },
  ];
  if (o.rule) {
    layers.push({ mark: { type: 'rule', color: '#c0392b', strokeDash: [5, 3] }, encoding: { y: { datum: o.rule.y } } });
    layers.push({ mark: { type: 'text', color: '#c0392b', align: 'left', dx: 3, dy: -6, fontSize: 10 }, encoding: { y: { datum: o.rule.y }, x: { value: 0 }, text: { value: o.rule.label } } });
  }
  const inner = { width: o.width ?? { step: 16 }, height: o.height ?? 220, layer: layers };
  const title = o.subtitle ? { text: o.title, subtitle: o.subtitle } : o.title;
  if (o.column) {
    return {
      title, data: { values: data },
      facet: { column: { field: o.column, type: 'nominal', title: o.columnTitle ?? null, sort: o.columnOrder ?? null } },
      spec: inner,
      ...(o.independentY ? { resolve: { scale: { y: 'independent' } } } : {}),
    };
  }
  return { title, data: { values: data }, ...inner };
}
