"""Render the book to static HTML without Quarto: `python tools/book.py [--out _book]` (what `make book` runs).

The pipeline is nbdev's docs build with its last stage, Quarto, replaced by nbconvert:

1. `_quarto.yml` (top level) is the single definition of the book: `book.chapters` gives the notebooks and their order.
   A listed notebook that does not exist yet is reported and skipped; one that fails to process makes the exit code 1.
2. Each notebook goes through nbdev 2.4.14's own docs processing, `nbdev.serve_drv.main` with
   `nbdev.processors.FilterDefaults`: exactly what `nbdev_proc_nbs`/`nbdev_preview` hand to Quarto. The title cell
   becomes frontmatter, a `show_doc` cell is added after each exported symbol, export/import/`show_doc` cells are
   executed (nothing else: every other output is the stored one), `#| hide`/export cells and `## ... -` headings go,
   and backticked names become doc links.
3. What nbdev leaves for Quarto is applied here: the cell options `echo`, `output`, `include`, `warning`,
   `code-fold`/`code-summary`, `label` with `fig-cap`/`tbl-cap` (numbered caption under the output, `@fig-...`
   cross-references), pandoc link attributes (`[source](url){target=...}`), heading attributes and `:::` divs.
   nbdev's absolute doc links (doc_host/doc_baseurl) are made relative to this book.
4. nbconvert's HTMLExporter (lab template, extended below with a chapter sidebar, the title with its `> description`
   as subtitle, prev/next links, and no CDN require.js) writes one page per chapter under nbdev's page name
   (`00_core.ipynb` -> `core.html`, `index.ipynb` -> `index.html`); images are inlined as base64.
5. MathJax 2.7 is copied from the Debian package (libjs-mathjax; `MATHJAX_DIR` overrides) into `OUT/mathjax/`, only
   what the TeX -> CommonHTML configuration loads, and referenced relatively: the book works from file:// and any
   static server, with no network.
"""
import argparse, base64, os, re, shutil, sys, tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import nbdev.serve_drv, nbformat, yaml  # pyyaml is a dependency of nbdev
from nbdev.processors import FilterDefaults, insert_warning

ROOT = Path(__file__).resolve().parents[1]
MATHJAX_DIR = Path(os.environ.get('MATHJAX_DIR', '/usr/share/javascript/mathjax'))
MATHJAX_CONFIGS = ['TeX-AMS_CHTML-full', 'Safe']  # nbconvert's default configuration
MATHJAX_PARTS = ['MathJax.js', *(f'config/{c}.js' for c in MATHJAX_CONFIGS), 'extensions', 'jax/input/TeX', 'jax/element',
                 'jax/output/CommonHTML', 'jax/output/PreviewHTML', 'fonts/HTML-CSS/TeX/woff']
KINDS = {'fig': 'Figure', 'tbl': 'Table'}

def chapters(config=ROOT/'_quarto.yml'):
    "Chapter notebooks listed in `config` (parts flattened), in order."
    def flat(items):
        for o in items:
            if isinstance(o, dict): yield from flat(o.get('chapters', [])) if 'chapters' in o else [o.get('href')]
            else: yield o
    return [ROOT/o for o in flat(yaml.safe_load(config.read_text())['book']['chapters']) if o]

def process(paths, dest):
    "nbdev's docs processing, one fresh process per notebook as `nbdev_proc_nbs` does: `{path: notebook}`, `{path: error}`."
    done, failed = {}, {}
    if not paths: return done, failed
    with ProcessPoolExecutor(min(len(paths), os.cpu_count() or 1), mp_context=get_context('spawn'), max_tasks_per_child=1) as pool:
        jobs = {p: pool.submit(nbdev.serve_drv.main, (p, dest/p.name, FilterDefaults)) for p in paths}
        for p, job in jobs.items():
            try: job.result(); done[p] = nbformat.read(dest/p.name, as_version=4)
            except Exception as e:  # the worker's traceback comes as text in __cause__: keep its root error line
                root = str(e.__cause__ or '').split('The above exception')[0].strip().splitlines()[-1:]
                failed[p] = f'{type(e).__name__}: {e}' + ''.join(f'\n  caused by {r}' for r in root)
    return done, failed

# --- What Quarto does with what nbdev leaves -------------------------------------------------------------------------
_re_opt = re.compile(r'^#\|\s*([\w-]+):\s?(.*)$')
_re_fm = re.compile(r'^---\s*\n(.*?\n)---\s*$', re.DOTALL)
_re_link_attrs = re.compile(r'\[([^\]\n]+)\]\(([^)\s]+)\)\{([^}\n]*)\}')
_re_attr = re.compile(r'\.([\w-]+)|#([\w-]+)|([\w-]+)=("[^"]*"|\S+)')
_re_div = re.compile(r'^:::+[ \t]*(\{[^}\n]*\}|[\w-]+)?[ \t]*$', re.MULTILINE)
_re_heading_attrs = re.compile(r'^(#{1,6}[ \t].*?)[ \t]*\{([^}\n]*)\}[ \t]*$', re.MULTILINE)
_re_ref = re.compile(r'(?<![\w@.])@((?:fig|tbl)-[\w-]*\w)')
_re_img = re.compile(r'(!\[[^\]\n]*\]\()([^)\s:]+\.(png|jpe?g|gif|svg))([)\s])')

def split_options(src):
    "Quarto cell options `{key: value}` and the source without them."
    lines, opts = src.splitlines(), {}
    while lines and (m := _re_opt.match(lines[0])):
        try: opts[m[1]] = yaml.safe_load(m[2])
        except yaml.YAMLError: opts[m[1]] = m[2]
        lines.pop(0)
    return opts, '\n'.join(lines)

def _attrs(s):
    "HTML attributes from a pandoc attribute block (`.class #id key=value`)."
    classes, out = [], []
    for cls, id_, key, val in _re_attr.findall(s):
        if cls: classes.append(cls)
        elif id_: out.append(f'id="{id_}"')
        else: out.append(f'{key}="{val.strip(chr(34))}"')
    return ' '.join(([f'class="{" ".join(classes)}"'] if classes else []) + out)

def _div(m):
    if m[1] is None: return '\n</div>\n'
    return f'\n<div {_attrs(m[1].strip("{}") if m[1].startswith("{") else "." + m[1])}>\n'

def _inline_img(m, folder):
    "A markdown image of a local file as a data URI (nbconvert's `embed_images` would also split inline HTML tags)."
    f = folder/m[2]
    if not f.is_file(): return m[0]
    mime = 'image/svg+xml' if m[3] == 'svg' else f'image/{m[3].replace("jpg", "jpeg")}'
    return f'{m[1]}data:{mime};base64,{base64.b64encode(f.read_bytes()).decode()}{m[4]}'

def pandoc_md(md, refs, page, doc_url, folder=ROOT):
    "Markdown with pandoc/Quarto-only syntax turned into what nbconvert's markdown renders."
    md = _re_img.sub(lambda m: _inline_img(m, folder), md)
    md = _re_link_attrs.sub(lambda m: f'<a href="{m[2]}" {_attrs(m[3])}>{m[1]}</a>', md)
    md = md.replace(doc_url, '')
    md = _re_div.sub(_div, md)
    md = _re_heading_attrs.sub(lambda m: (f'<a id="{i[0]}"></a>\n\n' if (i := re.findall(r'#([\w-]+)', m[2])) else '') + m[1], md)
    def ref(m):
        if m[1] not in refs: return m[0]
        where, name = refs[m[1]]
        return f'[{name}]({"" if where == page else where}#{m[1]})'
    return _re_ref.sub(ref, md)

def prepare(nb, page, fm, refs):
    "Apply the cell options nbdev leaves for Quarto; number captions into `refs` ({label: (page, 'Figure n')})."
    counts, cells = dict.fromkeys(KINDS, 0), []
    for cell in nb.cells:
        if cell.cell_type == 'raw' and _re_fm.match(cell.source.strip()): continue  # nbdev's frontmatter, kept in `fm`
        if cell.cell_type == 'markdown' and cell.source.strip() == insert_warning.content: continue  # an empty cell here
        if cell.cell_type == 'code':
            opts, cell.source = split_options(cell.source)
            if opts.get('include') is False: continue
            kind = str(opts.get('label', '')).split('-')[0]
            if kind in KINDS and f'{kind}-cap' in opts:
                counts[kind] += 1
                refs[opts['label']] = (page, f'{KINDS[kind]} {counts[kind]}')
            cell.metadata.book = opts
        cells.append(cell)
    nb.cells, nb.metadata.title = cells, fm.get('title', page)
    nb.metadata.pop('widgets', None)  # ipywidgets state that nbdev's exec_show_docs records; no widget runs offline
    return nb

def finish(nb, page, refs, doc_url, folder):
    "Second pass, once every chapter's labels are known: markdown fixes, captions, hidden inputs and outputs."
    md = lambda s: pandoc_md(s, refs, page, doc_url, folder)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == 'markdown': cell.source = md(cell.source)
        if cell.cell_type != 'code': cells.append(cell); continue
        opts = cell.metadata.pop('book', {})
        if opts.get('echo') is False or not cell.source.strip(): cell.metadata.transient = {'remove_source': True}
        if opts.get('output') is False: cell.outputs = []
        if opts.get('warning') is False: cell.outputs = [o for o in cell.outputs if o.get('name') != 'stderr']
        for o in cell.outputs:
            if 'text/markdown' in o.get('data', {}): o.data['text/markdown'] = md(o.data['text/markdown'])
        if opts.get('code-fold'):
            cell.metadata.book_fold = {'open': opts['code-fold'] == 'show', 'summary': opts.get('code-summary', 'Code')}
        label = str(opts.get('label', ''))
        if label in refs:
            cap = opts[label.split('-')[0] + '-cap']
            cell.metadata.book_fig = {'id': label, 'caption': md(f'{refs[label][1]}: {cap}')}
        if cell.metadata.get('transient') and not cell.outputs: continue
        cells.append(cell)
    nb.cells = cells
    return nb

# --- HTML ------------------------------------------------------------------------------------------------------------
CSS = """
body.jp-Notebook { margin: 0; padding: 0; }
.book-sidebar { position: fixed; top: 0; bottom: 0; left: 0; width: 15rem; overflow-y: auto; box-sizing: border-box;
  padding: 1.5rem 1rem; background: #f7f7f9; border-right: 1px solid #ddd; font: 14px/1.5 var(--jp-ui-font-family); }
.book-sidebar .book-name { font-weight: 600; font-size: 1.15rem; margin-bottom: 1rem; display: block; }
.book-sidebar ol { list-style: none; padding: 0; margin: 0; }
.book-sidebar li a { display: block; padding: .25rem .5rem; border-radius: 4px; color: #333; text-decoration: none; }
.book-sidebar li a:hover { background: #e9e9ef; }
.book-sidebar li a.active { background: #e1e8f7; color: #0d47a1; font-weight: 600; }
main.book-main { margin-left: 15rem; padding: 1.5rem 2.5rem 3rem; max-width: 60rem; }
.book-header { font-family: var(--jp-content-font-family); }
.book-header h1 { font-size: 2.2rem; margin: .5rem 0; }
.book-header .subtitle { color: #555; font-size: 1.15rem; margin: 0 0 1.5rem; }
.book-pager { display: flex; justify-content: space-between; margin-top: 3rem; padding-top: 1rem;
  border-top: 1px solid #ddd; font-family: var(--jp-ui-font-family); }
figure.book-figure { margin: 0; }
figure.book-figure figcaption { margin: .3rem 0 1rem 1rem; color: #444; font: .95em/1.4 var(--jp-content-font-family); }
figure.book-figure figcaption p { margin: 0; }
.jp-InputArea-editor pre { white-space: pre-wrap; }  /* Quarto's code-overflow: wrap (_quarto.yml) */
details.code-fold > summary { cursor: pointer; color: #555; font-size: .9em; padding: .2rem 0; }
div[class*="callout-"] { border-left: 4px solid #1e88e5; background: #f3f8fd; padding: .25rem 1rem; margin: 1rem 0; }
.callout-warning, .callout-caution { border-left-color: #f0ad4e; background: #fdf8ef; }
.callout-important { border-left-color: #d9534f; background: #fdf3f2; }
.callout-tip { border-left-color: #43a047; background: #f3faf3; }
@media (max-width: 50rem) { .book-sidebar { position: static; width: auto; border-right: 0; border-bottom: 1px solid #ddd; }
  main.book-main { margin-left: 0; padding: 1rem; } }
"""

TEMPLATE = """{%- extends 'index.html.j2' -%}
{% block html_head_js_requirejs %}{% endblock %}{% block jupyter_widgets %}{% endblock %}{% block html_head_js_mermaidjs %}{% endblock %}
{% block extra_css %}<link rel="icon" href="data:,"><style type="text/css">{{ resources.book.css }}</style>{% endblock %}
{%- block body_header -%}
<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<nav class="book-sidebar"><a class="book-name" href="index.html">{{ resources.book.name }}</a><ol>
{%- for href, title in resources.book.nav %}
<li><a href="{{ href }}"{% if href == resources.book.page %} class="active"{% endif %}>{{ title | markdown2html | striptags }}</a></li>
{%- endfor %}</ol></nav>
<main class="book-main">
<header class="book-header"><h1 class="title">{{ resources.book.title | markdown2html | replace('<p>', '') | replace('</p>', '') }}</h1>
{%- if resources.book.subtitle %}<div class="subtitle">{{ resources.book.subtitle | markdown2html }}</div>{% endif %}</header>
{%- endblock body_header -%}
{% block input_group -%}
{%- if cell.metadata.book_fold -%}
<details class="code-fold"{% if cell.metadata.book_fold.open %} open{% endif %}><summary>{{ cell.metadata.book_fold.summary | e }}</summary>
{{ super() }}</details>
{%- else -%}{{ super() }}{%- endif -%}
{%- endblock input_group %}
{% block outputs %}
{%- if cell.metadata.book_fig -%}
<figure class="book-figure" id="{{ cell.metadata.book_fig.id }}">{{ super() }}
<figcaption>{{ cell.metadata.book_fig.caption | markdown2html }}</figcaption></figure>
{%- else -%}{{ super() }}{%- endif -%}
{%- endblock outputs %}
{% block body_footer %}
<nav class="book-pager">
<span>{% if resources.book.prev %}<a href="{{ resources.book.prev[0] }}" rel="prev">&larr; {{ resources.book.prev[1] | markdown2html | striptags }}</a>{% endif %}</span>
<span>{% if resources.book.next %}<a href="{{ resources.book.next[0] }}" rel="next">{{ resources.book.next[1] | markdown2html | striptags }} &rarr;</a>{% endif %}</span>
</nav>
</main>
</body>
{% endblock body_footer %}
"""

def html_exporter():
    "nbconvert's lab HTML exporter with the book template, no prompts, and the local MathJax."
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter  # imported here: slow, and not needed by the processing workers
    return HTMLExporter(template_name='lab', extra_loaders=[DictLoader({'book.html.j2': TEMPLATE})],
                        template_file='book.html.j2', exclude_input_prompt=True, exclude_output_prompt=True,
                        mathjax_url=f'mathjax/MathJax.js?config={",".join(MATHJAX_CONFIGS)}')

def copy_mathjax(out):
    "Copy the part of MathJax that the TeX -> CommonHTML configuration loads."
    if not (MATHJAX_DIR/'MathJax.js').exists():
        sys.exit(f'book: MathJax not found in {MATHJAX_DIR}; install libjs-mathjax (`make system`) or set MATHJAX_DIR')
    shutil.rmtree(out/'mathjax', ignore_errors=True)
    for part in MATHJAX_PARTS:
        src, dst = MATHJAX_DIR/part, out/'mathjax'/part
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir(): shutil.copytree(src, dst)
        else: shutil.copy2(src, dst)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=str(ROOT/'_book'), help='output folder (default: _book)')
    out = Path(ap.parse_args(argv).out).resolve()
    os.chdir(ROOT)  # nbdev finds settings.ini from here, and runs the show_doc cells here, as nbdev_proc_nbs does
    from nbdev.config import get_config
    from nbdev.doclinks import _nbpath2html
    cfg = get_config()
    doc_url = '/'.join(o for o in (cfg.doc_host.rstrip('/'), cfg.doc_baseurl.strip('/')) if o) + '/'  # nbdev's doc links
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out)
    paths = chapters()
    missing = [p for p in paths if not p.exists()]
    for p in missing: print(f'book: warning: chapter {p.relative_to(ROOT)} is listed in _quarto.yml but does not exist yet')
    with tempfile.TemporaryDirectory() as tmp:
        done, failed = process([p for p in paths if p.exists()], Path(tmp))
    pages, refs = [], {}
    for path, nb in done.items():
        m = nb.cells and nb.cells[0].cell_type == 'raw' and _re_fm.match(nb.cells[0].source.strip())
        fm = yaml.safe_load(m[1]) if m else {}
        page = fm.get('output-file') or _nbpath2html(path).name
        pages.append((path, page, fm, prepare(nb, page, fm, refs)))
    exporter = html_exporter()
    nav = [(page, fm.get('title', page)) for _, page, fm, _ in pages]
    for i, (path, page, fm, nb) in enumerate(pages):
        book = dict(name=cfg.title, css=CSS, nav=nav, page=page, title=fm.get('title', page), subtitle=fm.get('description'),
                    prev=nav[i-1] if i else None, next=nav[i+1] if i+1 < len(nav) else None)
        html, _ = exporter.from_notebook_node(finish(nb, page, refs, doc_url, path.parent), resources={'book': book})
        (out/page).write_text(html, encoding='utf-8')
        print(f'book: {path.relative_to(ROOT)} -> {(out/page).relative_to(out.parent)}')
    if nav and not (out/'index.html').exists():
        (out/'index.html').write_text(f'<!DOCTYPE html><meta http-equiv="refresh" content="0; url={nav[0][0]}">')
    for p, msg in failed.items(): print(f'book: ERROR: chapter {p.relative_to(ROOT)} failed to process:\n  {msg}', file=sys.stderr)
    print(f'book: {len(pages)} of {len(paths)} chapters written to {out}' + (f', {len(missing)} missing' if missing else ''))
    return 1 if failed else 0

if __name__ == '__main__': sys.exit(main())
