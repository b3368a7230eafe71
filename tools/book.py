"""Render the book to static HTML without Quarto: `python tools/book.py [--out _book]` (what `make book` runs).

The pipeline is nbdev's docs build with its last stage, Quarto, replaced by nbconvert:

1. `_quarto.yml` (top level) is the single definition of the book: `book.chapters` gives the notebooks, their parts
   (`- part: Title` with its own `chapters:`) and their order. Chapters are numbered as Quarto numbers them: the index
   page and any chapter whose title carries `{.unnumbered}` get no number, the others 1, 2, ... across parts; sections
   (`##`) are numbered below their chapter (`number-depth: 2`), figures per chapter (`Figure 3.2`). A listed notebook
   that does not exist yet is reported and skipped; one that fails to process makes the exit code 1.
2. Each notebook goes through nbdev 2.4.14's own docs processing, `nbdev.serve_drv.main` with
   `nbdev.processors.FilterDefaults`: exactly what `nbdev_proc_nbs`/`nbdev_preview` hand to Quarto. The title cell
   becomes frontmatter, a `show_doc` cell is added after each exported symbol, export/import/`show_doc` cells are
   executed (nothing else: every other output is the stored one), `#| hide`/export cells and `## ... -` headings go,
   and backticked names become doc links. Like `nbdev_proc_nbs`, a few worker processes take the notebooks in turn
   (each imports torch once, not once per notebook), and a processed notebook is cached (`OUT/.cache/`, or `--cache`),
   keyed by the notebook, the package's modules, this file and the library versions, so a rebuild re-processes only
   what changed; `--if-stale` does nothing at all when OUT was built from the same sources (`OUT/.book-stamp`).
   One extension, in the workers only: `show_doc` renders through `show_doc_markdown` below (nbdev's `renderer`
   setting, applied by patching `BasicMarkdownRenderer`): the signature, then a table of the parameters with their
   docments as markdown (links and code render), or of a NamedTuple's fields with their types and trailing comments,
   and a `source` link to the module's page in this book.
3. What nbdev leaves for Quarto is applied here: the cell options `echo`, `output`, `include`, `warning`,
   `code-fold`/`code-summary`, `label` with `fig-cap`/`tbl-cap` (numbered caption under the output, `@fig-...`
   cross-references), pandoc link attributes (`[source](url){target=...}`), heading attributes (`{#id .unnumbered}`)
   and `:::` divs. Links to a chapter's notebook (`09_linearize.ipynb#anchor`) point at its page (`linearize.html`),
   as Quarto does; nbdev's absolute doc links (doc_host/doc_baseurl) are made relative, and one whose anchor does not
   exist in the book (a private name, say) is dropped, leaving the code. Headings get pandoc's identifiers
   (`## Exact moments` -> `#exact-moments`, `### Table` -> `#table`), so nbdev's doc links and Quarto-style anchors
   resolve. Any other link to a page or anchor missing from the book is reported as dangling.
4. nbconvert's HTMLExporter (lab template, extended below) writes one page per chapter under nbdev's page name
   (`00_core.ipynb` -> `core.html`, `index.ipynb` -> `index.html`): a sidebar with the parts, numbered chapters and an
   offline search box, the numbered title with its `> description` as subtitle, a table of contents of the page's
   `##`/`###` headings on the right, tables styled as book tables, prev/next links, no CDN require.js; images are
   inlined as base64. Each exported module is written as a highlighted page, `src/netmoments/NAME.py.html#L12`, the
   target of the `source` links. `search.js` holds the search index (titles, headings and text of every page).
5. MathJax 2.7 is copied from the Debian package (libjs-mathjax; `MATHJAX_DIR` overrides) into `OUT/mathjax/`, only
   what the TeX -> CommonHTML configuration loads, and referenced relatively: the book works from file:// and any
   static server, with no network.
"""
import argparse, base64, hashlib, html, json, os, re, shutil, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from html.parser import HTMLParser
from multiprocessing import get_context
from pathlib import Path
from urllib.parse import urlsplit

import nbformat, yaml  # pyyaml is a dependency of nbdev

ROOT = Path(__file__).resolve().parents[1]
MATHJAX_DIR = Path(os.environ.get('MATHJAX_DIR', '/usr/share/javascript/mathjax'))
MATHJAX_CONFIGS = ['TeX-AMS_CHTML-full', 'Safe']  # nbconvert's default configuration
MATHJAX_PARTS = ['MathJax.js', *(f'config/{c}.js' for c in MATHJAX_CONFIGS), 'extensions', 'jax/input/TeX', 'jax/element',
                 'jax/output/CommonHTML', 'jax/output/PreviewHTML', 'fonts/HTML-CSS/TeX/woff']
KINDS = {'fig': 'Figure', 'tbl': 'Table'}
NUMBER_DEPTH = 2  # as `number-depth` in _quarto.yml: chapters and their `##` sections are numbered

# --- The book's definition -------------------------------------------------------------------------------------------
def toc(config=ROOT/'_quarto.yml'):
    "`[(notebook path, part title or None)]` in reading order, from `book.chapters` of `config`."
    out = []
    def walk(items, part):
        for o in items or []:
            if isinstance(o, dict) and 'part' in o: walk(o.get('chapters'), str(o['part']))
            elif isinstance(o, dict):
                if o.get('href'): out.append((ROOT/o['href'], part))
            elif o: out.append((ROOT/o, part))
    walk(yaml.safe_load(Path(config).read_text())['book']['chapters'], None)
    return out

def chapters(config=ROOT/'_quarto.yml'):
    "Chapter notebooks listed in `config` (parts flattened), in order."
    return [p for p, _ in toc(config)]

def page_name(path):
    "nbdev's page for a notebook: `09_linearize.ipynb` -> `linearize.html` (nbdev.doclinks._nbpath2html)."
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', Path(path).name.lower()).rsplit('.', 1)[0] + '.html'

_re_title_attrs = re.compile(r'\s*\{([^{}]*)\}\s*$')

def split_title(title):
    "A title without its pandoc attributes (`References {.unnumbered}`), and the attribute classes."
    m = _re_title_attrs.search(title or '')
    if not m: return title or '', set()
    return title[:m.start()], set(re.findall(r'\.([\w-]+)', m[1])) | ({'unnumbered'} if '-' in m[1].split() else set())

# --- nbdev's processing, in worker processes -------------------------------------------------------------------------
def _anno(a):
    "An annotation as written in the source: `Tensor`, `int|None`, `nn.Module`."
    import inspect
    if a is inspect.Parameter.empty: return ''
    a = getattr(a, '__forward_arg__', a)  # typing.ForwardRef('Tensor')
    if isinstance(a, str): return a.replace(' ', '')
    s = a.__qualname__ if isinstance(a, type) and a.__module__ != 'typing' else inspect.formatannotation(a)
    return re.sub(r'\b(?:typing|torch|collections\.abc|numpy|netmoments\.\w+)\.(?=\w)', '', s).replace(' ', '')

def _md_cell(s):
    "Markdown for a table cell: one line, `|` escaped, `<` kept from opening an HTML tag."
    return re.sub(r'<(?=[A-Za-z/!?])', '&lt;', ' '.join(str(s).split()).replace('|', r'\|'))

def _md_code(s):
    "Code in a table cell (a default value): HTML, since a `|` in a markdown code span would end the cell."
    return f'<code>{html.escape(s).replace("|", "&#124;")}</code>' if s else ''

def _md_type(s):
    "A type in a table cell: each name in backticks (nbdev links the ones it documents), `|` escaped."
    if not s: return ''
    return r'\|'.join(f'`{p}`' for p in s.split('|'))

def _package_class_sources():
    "`{class name: source}` of the classes defined at the top of the package's modules."
    import ast
    global _CLASS_SOURCES
    if '_CLASS_SOURCES' not in globals():
        _CLASS_SOURCES = {}
        for f in sorted((ROOT/'netmoments').rglob('*.py')):
            src = f.read_text(encoding='utf-8')
            try: tree = ast.parse(src)
            except SyntaxError: continue
            for node in tree.body:
                if isinstance(node, ast.ClassDef):  # whole lines: the last field's trailing comment is past the node's end
                    _CLASS_SOURCES.setdefault(node.name, '\n'.join(src.splitlines()[node.lineno-1:node.end_lineno]))
    return _CLASS_SOURCES

def namedtuple_fields(cls):
    "`[(name, type, default, comment)]` of a NamedTuple, comments from its source: `mean:Tensor  # (..., d) mean`."
    import ast, inspect, io, textwrap, tokenize
    fields, comments = {}, {}
    try: src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # defined by a notebook cell, as nbdev's processing runs it: read the exported module
        src = _package_class_sources().get(cls.__name__, '')
    try:
        node = ast.parse(src).body[0]
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT: comments[tok.start[0]] = tok.string.lstrip('#').strip()
        lines = src.splitlines()
        for st in node.body:
            if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                doc = next((comments[i] for i in range(st.lineno, st.end_lineno+1) if i in comments), '')
                if not doc:  # fastcore's docments also takes the comment lines right above a parameter
                    i, above = st.lineno - 1, []
                    while i >= 1 and i in comments and lines[i-1].strip().startswith('#'): above.insert(0, comments[i]); i -= 1
                    doc = ' '.join(above)
                fields[st.target.id] = (ast.unparse(st.annotation).replace(' ', ''),
                                        ast.unparse(st.value) if st.value is not None else '', doc)
    except (SyntaxError, IndexError, AttributeError, tokenize.TokenError): pass
    annos = getattr(cls, '__annotations__', {})
    defaults = getattr(cls, '_field_defaults', {})
    return [(f, *(fields.get(f) or (_anno(annos.get(f, '')), repr(defaults[f]) if f in defaults else '', '')))
            for f in cls._fields]

def _signature(prefix, name, params, ret, width=100):
    "A signature on one line, or its parameters filled into lines of `width` below the name."
    one = f'{prefix} {name}({", ".join(params)}){ret}'
    if len(one) <= width or not params: return one
    lines, cur = [], ''
    for p in params:
        if cur and len(cur) + len(p) + 2 > width - 4: lines.append(cur + ','); cur = p
        else: cur = f'{cur}, {p}' if cur else p
    lines.append(cur)
    return f'{prefix} {name}(\n' + '\n'.join('    ' + l for l in lines) + f'\n){ret}'

def show_doc_markdown(self):
    "`show_doc` in the book (patched onto nbdev's `BasicMarkdownRenderer`): signature, parameter or field table, source."
    import inspect
    from fastcore.docments import docments
    from nbdev.doclinks import NbdevLookup
    sym, P = self.sym, inspect.Parameter
    doc = '---\n\n'
    src = NbdevLookup().code(self.fn)
    if src and (m := re.search(r'/blob/[^/]+/(.+?)#L(\d+)$', src)): doc += f'[source](src/{m[1]}.html#L{m[2]}){{.book-source}}\n\n'
    doc += f'{"#" * self.title_level} {self.nm}\n\n'
    is_nt = isinstance(sym, type) and issubclass(sym, tuple) and hasattr(sym, '_fields')
    try: sig = inspect.signature(sym)
    except (ValueError, TypeError): sig = None
    if sig is None and not is_nt: return _nbdev_markdown(self)
    rows, ret = [], ''
    if is_nt:
        fields = namedtuple_fields(sym)
        params = [f'{n}' + (f':{t}' if t else '') + (f'={d}' if d else '') for n, t, d, _ in fields]
        rows = [(f'{n}', t, d, c) for n, t, d, c in fields]
        header = '**Field**'
    else:
        try: dm = docments(sym, full=True)
        except Exception: dm = {}
        params, kwonly = [], False
        for p in sig.parameters.values():
            if p.name == 'self': continue
            if p.kind == P.KEYWORD_ONLY and not kwonly: params.append('*'); kwonly = True
            if p.kind == P.VAR_POSITIONAL: kwonly = True
            star = '*' if p.kind == P.VAR_POSITIONAL else '**' if p.kind == P.VAR_KEYWORD else ''
            t, d = _anno(p.annotation), ('' if p.default is P.empty else repr(p.default))
            params.append(star + p.name + (f':{t}' if t else '') + (f'={d}' if d else ''))
            rows.append((star + p.name, t, d, (dm.get(p.name) or {}).get('docment') or ''))
        if sig.return_annotation is not P.empty: ret = f'->{_anno(sig.return_annotation)}'
        header = ''
        rdoc = (dm.get('return') or {}).get('docment') or ''
        if not any(r[3] for r in rows) and not rdoc: rows = []  # like fastcore's DocmentTbl: no docments, no table
        elif ret or rdoc: rows.append(('**Returns**', ret[2:], '', rdoc))
    prefix = 'class' if isinstance(sym, type) else 'async def' if inspect.iscoroutinefunction(sym) else 'def'
    doc += f'```python\n{_signature(prefix, self.nm, params, ret)}\n```\n\n'
    if self.docs: doc += re.sub(r'^(\s*)(.+)', r'\1*\2*', self.docs, count=1) + '\n\n'
    if rows:
        show_default = any(r[2] for r in rows)
        cols = [header, '**Type**'] + (['**Default**'] if show_default else []) + ['**Details**']
        doc += '| ' + ' | '.join(cols) + ' |\n|' + '---|' * len(cols) + '\n'
        for n, t, d, c in rows:
            cells = [n if n.startswith('**') else f'`{n}`', _md_type(t)] + ([_md_code(d)] if show_default else []) + [_md_cell(c)]
            doc += '| ' + ' | '.join(cells) + ' |\n'
    return doc

def _worker_init():
    "Set the book's show_doc renderer in a processing worker."
    import inspect, nbdev.showdoc
    from fastcore import docments as fd
    global _nbdev_markdown
    R = nbdev.showdoc.BasicMarkdownRenderer
    _nbdev_markdown, init = R._repr_markdown_, R.__init__
    def __init__(self, sym, name=None, title_level=3, maxline=110):
        try: init(self, sym, name=name, title_level=title_level, maxline=maxline)
        except NameError:  # an annotation naming a type imported only for type checkers: what the book renderer needs
            self.sym = sym = fd._unwrap_sym(sym)
            self.name, self.title_level, self.maxline, self.nm = name, title_level, maxline, name or fd.qual_name(sym)
            self.isfunc, self.sig, self.docs, self.fn = inspect.isfunction(sym), None, fd._docstring(sym), fd._fullname(sym)
            self.dm = self.nm  # what the text/plain repr shows
    R.__init__, R._repr_markdown_ = __init__, show_doc_markdown

def _digest(*parts):
    h = hashlib.sha256()
    for p in parts: h.update(p if isinstance(p, bytes) else str(p).encode()); h.update(b'\0')
    return h.hexdigest()[:20]

def _lib_digest():
    "What every notebook's processing depends on besides itself: the package, settings, this file, library versions."
    from importlib.metadata import version
    files = sorted((ROOT/'netmoments').rglob('*.py')) + [ROOT/'settings.ini', Path(__file__).resolve()]
    vers = [version(p) for p in ('nbdev', 'fastcore', 'execnb', 'torch')]
    return _digest(*vers, *(f'{f.relative_to(ROOT)}\0'.encode() + f.read_bytes() for f in files if f.exists()))

def inputs_digest(config=ROOT/'_quarto.yml'):
    "Digest of everything the book is built from: `_quarto.yml`, its notebooks, the package, this file, MathJax's path."
    nbs = [p for p in chapters(config) if p.exists()]
    return _digest(_lib_digest(), Path(config).read_bytes(), MATHJAX_DIR, *(f'{p.name}\0'.encode() + p.read_bytes() for p in nbs))

def process(paths, dest, cache=None):
    "nbdev's docs processing of `paths` in a few worker processes: `{path: notebook}`, `{path: error}`."
    done, failed, todo = {}, {}, []
    lib = _lib_digest() if cache else ''
    for p in paths:
        key = cache/f'{p.stem}-{_digest(lib, p.read_bytes())}.ipynb' if cache else None
        if key and key.exists(): done[p] = nbformat.read(key, as_version=4)
        else: todo.append((p, key))
    print(f'book: nbdev processing of {len(todo)} notebooks ({len(done)} more from the cache)', flush=True)
    if not todo: return {p: done[p] for p in paths if p in done}, failed
    todo.sort(key=lambda o: -o[0].stat().st_size)  # biggest first: the workers finish together
    import nbdev.serve_drv
    from nbdev.processors import FilterDefaults
    # Jobs name nbdev's function, not one of this file: the IPython shell that runs show_doc replaces a worker's __main__
    with ProcessPoolExecutor(min(len(todo), os.cpu_count() or 1), mp_context=get_context('spawn'), initializer=_worker_init) as pool:
        jobs = {p: (pool.submit(nbdev.serve_drv.main, (p, dest/p.name, FilterDefaults)), key) for p, key in todo}
        for p, (job, key) in jobs.items():
            try:
                job.result(); done[p] = nbformat.read(dest/p.name, as_version=4)
                if key:
                    for old in cache.glob(f'{p.stem}-*.ipynb'): old.unlink()
                    shutil.copy2(dest/p.name, key)
            except Exception as e:  # the worker's traceback comes as text in __cause__: keep its root error line
                root = str(e.__cause__ or '').split('The above exception')[0].strip().splitlines()[-1:]
                failed[p] = f'{type(e).__name__}: {e}' + ''.join(f'\n  caused by {r}' for r in root)
    return {p: done[p] for p in paths if p in done}, failed

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
    if m[1] is None: return '\n\n</div>\n'
    return f'\n<div {_attrs(m[1].strip("{}") if m[1].startswith("{") else "." + m[1])}>\n\n'

def _heading_attrs(m):
    "`## Title {#id .unnumbered}` -> `## Title` with a marker the HTML pass turns into the heading's id and classes."
    ids, classes = re.findall(r'#([\w-]+)', m[2]), re.findall(r'\.([\w-]+)', m[2]) + (['unnumbered'] if '-' in m[2].split() else [])
    marker = ''.join([f' data-id="{ids[0]}"' if ids else '', f' data-class="{" ".join(classes)}"' if classes else ''])
    return f'{m[1]} <span class="book-hattr"{marker}></span>' if marker else m[1]

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
    md = _re_div.sub(_div, md)
    md = _re_heading_attrs.sub(_heading_attrs, md)
    def ref(m):
        if m[1] not in refs: return m[0]
        where, name = refs[m[1]]
        return f'[{name}]({"" if where == page else where}#{m[1]})'
    return _re_ref.sub(ref, md)

def prepare(nb, page, fm, refs, number=None):
    "Apply the cell options nbdev leaves for Quarto; number captions into `refs` ({label: (page, 'Figure 3.1')})."
    counts, cells = dict.fromkeys(KINDS, 0), []
    for cell in nb.cells:
        if cell.cell_type == 'raw' and _re_fm.match(cell.source.strip()): continue  # nbdev's frontmatter, kept in `fm`
        if cell.cell_type == 'markdown' and cell.source.strip() == '<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->': continue
        if cell.cell_type == 'code':
            opts, cell.source = split_options(cell.source)
            if opts.get('include') is False: continue
            kind = str(opts.get('label', '')).split('-')[0]
            if kind in KINDS and f'{kind}-cap' in opts:
                counts[kind] += 1
                refs[opts['label']] = (page, f'{KINDS[kind]} {f"{number}." if number else ""}{counts[kind]}')
            cell.metadata.book = opts
        cells.append(cell)
    nb.cells, nb.metadata.title = cells, split_title(fm.get('title', page))[0]
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
.book-sidebar { position: fixed; top: 0; bottom: 0; left: 0; width: 16rem; overflow-y: auto; box-sizing: border-box;
  padding: 1.25rem .9rem; background: #f7f7f9; border-right: 1px solid #ddd; font: 14px/1.45 var(--jp-ui-font-family); z-index: 2; }
.book-sidebar .book-name { font-weight: 600; font-size: 1.15rem; margin-bottom: .75rem; display: block; color: #222; text-decoration: none; }
.book-sidebar ul { list-style: none; padding: 0; margin: 0; }
.book-sidebar li a { display: flex; gap: .1rem; padding: .2rem .5rem; border-radius: 4px; color: #333; text-decoration: none; }
.book-sidebar li a:hover { background: #e9e9ef; }
.book-sidebar li a.active { background: #e1e8f7; color: #0d47a1; font-weight: 600; }
.book-sidebar .book-part > .book-part-title { display: block; margin: .9rem 0 .2rem; padding: 0 .5rem; font-weight: 600;
  color: #555; font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; }
.chapter-number { font-variant-numeric: tabular-nums; }
.book-sidebar .chapter-number { min-width: 1.6rem; flex: none; color: #666; }
.book-search { margin: 0 0 .5rem; }
.book-search input { width: 100%; box-sizing: border-box; padding: .35rem .5rem; border: 1px solid #ccc; border-radius: 4px;
  font: inherit; background: #fff; }
.book-search-results { position: fixed; z-index: 20; width: min(34rem, 90vw); max-height: 70vh; overflow-y: auto;
  background: #fff; border: 1px solid #ccc; border-radius: 6px; box-shadow: 0 6px 24px rgba(0,0,0,.18); padding: .25rem 0;
  font: 14px/1.4 var(--jp-ui-font-family); }
.book-search-results[hidden] { display: none; }
.book-search-results a { display: block; padding: .45rem .8rem; color: #222; text-decoration: none; border-bottom: 1px solid #f0f0f0; }
.book-search-results a:hover, .book-search-results a.selected { background: #eef3fb; }
.book-search-results .hit-page { display: block; font-size: .8rem; color: #666; }
.book-search-results .hit-head { display: block; font-weight: 600; color: #0d47a1; }
.book-search-results .hit-text { display: block; font-size: .85rem; color: #444; }
.book-search-results .hit-none { padding: .5rem .8rem; color: #666; }
.book-search-results mark { background: #fff0a0; padding: 0; }
main.book-main { margin-left: 16rem; margin-right: 14rem; padding: 1.5rem 2.5rem 3rem; min-width: 0; }
.book-toc { position: fixed; top: 0; right: 0; bottom: 0; width: 14rem; box-sizing: border-box; overflow-y: auto;
  padding: 1.5rem 1rem; font: 13px/1.4 var(--jp-ui-font-family); border-left: 1px solid #eee; background: #fff; }
.book-toc .book-toc-title { font-weight: 600; margin-bottom: .5rem; color: #333; }
.book-toc ul { list-style: none; margin: 0; padding: 0; }
.book-toc ul ul { padding-left: .9rem; }
.book-toc a { display: block; padding: .15rem .4rem; color: #555; text-decoration: none; border-left: 2px solid transparent;
  overflow-wrap: anywhere; }
.book-toc a:hover { color: #0d47a1; border-left-color: #0d47a1; }
.book-toc .header-section-number { margin-right: .3rem; }
.book-header { font-family: var(--jp-content-font-family); }
.book-header h1 { font-size: 2.1rem; margin: .5rem 0; line-height: 1.2; }
.book-header .subtitle { color: #555; font-size: 1.1rem; margin: 0 0 1.5rem; }
.book-header .subtitle p { white-space: normal; word-break: normal; }
.book-pager { display: flex; justify-content: space-between; gap: 1rem; margin-top: 3rem; padding-top: 1rem;
  border-top: 1px solid #ddd; font-family: var(--jp-ui-font-family); }
.book-pager a { text-decoration: none; }
.jp-RenderedHTMLCommon p, .jp-RenderedHTMLCommon li { white-space: normal; word-break: normal; overflow-wrap: break-word; }
.jp-RenderedHTMLCommon h1, .jp-RenderedHTMLCommon h2, .jp-RenderedHTMLCommon h3 { scroll-margin-top: 1rem; }
.jp-RenderedHTMLCommon h2 .header-section-number { margin-right: .5rem; }
.jp-RenderedHTMLCommon a.anchor-link { display: inline; visibility: hidden; margin-left: .3rem; text-decoration: none; color: #999; }
.jp-RenderedHTMLCommon :is(h1, h2, h3, h4):hover a.anchor-link { visibility: visible; }
.jp-RenderedHTMLCommon img { max-width: 100%; height: auto; }
.jp-OutputArea-output { overflow-x: auto; }
.jp-OutputArea-output.jp-RenderedMarkdown { padding-left: var(--jp-code-padding); }  /* Markdown(...) outputs line up with prose */
a.book-source { float: right; font-size: smaller; }
.jp-RenderedHTMLCommon a[id] { scroll-margin-top: 2rem; }
.jp-RenderedHTMLCommon li:has(> a:target), .jp-RenderedHTMLCommon li:has(> p > a:target) { background: #fff6cc; }
.jp-RenderedMarkdown .highlight pre { background: #f6f8fa; padding: .45rem .7rem; border-radius: 4px; white-space: pre-wrap; }
.jp-OutputArea-output img.book-zoomable { cursor: zoom-in; }
.jp-OutputArea-output img.book-zoomed { position: fixed; inset: 0; margin: auto; max-width: 96vw; max-height: 96vh;
  width: auto; height: auto; z-index: 50; background: #fff; cursor: zoom-out; box-shadow: 0 0 0 100vmax rgba(0,0,0,.55); }
figure.book-figure { margin: 0; }
figure.book-figure figcaption { margin: .3rem 0 1rem 1rem; color: #444; font: .95em/1.4 var(--jp-content-font-family); }
figure.book-figure figcaption p { margin: 0; }
.jp-InputArea-editor pre { white-space: pre-wrap; }  /* Quarto's code-overflow: wrap (_quarto.yml) */
details.code-fold > summary { cursor: pointer; color: #555; font-size: .9em; padding: .2rem 0; }
div[class*="callout-"] { border-left: 4px solid #1e88e5; background: #f3f8fd; padding: .25rem 1rem; margin: 1rem 0; }
.callout-warning, .callout-caution { border-left-color: #f0ad4e; background: #fdf8ef; }
.callout-important { border-left-color: #d9534f; background: #fdf3f2; }
.callout-tip { border-left-color: #43a047; background: #f3faf3; }
/* Tables: netmoments.core.Table outputs, markdown tables, show_doc's parameter tables */
.jp-RenderedHTMLCommon .book-table { overflow-x: auto; max-width: 100%; margin: .5rem 0 1.25rem; }
.jp-RenderedHTMLCommon .book-table table { border-collapse: collapse; table-layout: auto; margin: 0; font-size: 13.5px;
  color: #222; border: 1px solid #d0d7de; }
.jp-RenderedHTMLCommon .book-table caption { caption-side: top; text-align: left; padding: 0 0 .35rem; color: #333; font-weight: 600; }
.jp-RenderedHTMLCommon .book-table th, .jp-RenderedHTMLCommon .book-table td { border: 1px solid #d0d7de;
  padding: .3rem .65rem; text-align: left; vertical-align: top; line-height: 1.4; }
.jp-RenderedHTMLCommon .book-table thead th { background: #f1f4f8; border-bottom: 2px solid #a9b4c2; vertical-align: bottom; }
.jp-RenderedHTMLCommon .book-table tbody tr:nth-child(even) { background: #fafbfc; }
.jp-RenderedHTMLCommon .book-table tbody tr:hover { background: #f0f5fc; }
.jp-RenderedHTMLCommon .book-table .num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.jp-RenderedHTMLCommon .book-table td p { margin: 0; }
@media (max-width: 75rem) { .book-toc { display: none; } main.book-main { margin-right: 0; } }
@media (max-width: 50rem) { .book-sidebar { position: static; width: auto; border-right: 0; border-bottom: 1px solid #ddd; }
  main.book-main { margin-left: 0; padding: 1rem; } }
"""

SRC_CSS = """
body { margin: 0; font: 14px/1.5 system-ui, sans-serif; color: #222; }
header { position: sticky; top: 0; background: #f7f7f9; border-bottom: 1px solid #ddd; padding: .6rem 1.25rem; }
header a { text-decoration: none; }
h1 { font-size: 1.2rem; margin: 0; font-family: monospace; }
pre.book-src { margin: 0; padding: .75rem 0; font: 13px/1.45 monospace; }
.book-src .line { display: block; padding-right: 1rem; white-space: pre-wrap; scroll-margin-top: 5rem; min-height: 1.45em; }
.book-src .line:target { background: #fff3c4; }
.book-src .ln { display: inline-block; width: 3.5rem; padding-right: 1rem; text-align: right; color: #999; text-decoration: none;
  user-select: none; }
"""

# book.js: figures open at full size on click; offline search over `search.js` (window.BOOK_SEARCH: [{u: url,
# p: page, h: heading, x: text}]), loaded on first use; the sidebar scrolled to the current chapter.
BOOK_JS = r"""
(function () {  // a figure scaled down to the column opens at full size on click
  function mark() {
    document.querySelectorAll('.jp-OutputArea-output img').forEach(function (img) {
      if (img.naturalWidth > img.clientWidth + 8) img.classList.add('book-zoomable');
    });
  }
  window.addEventListener('load', mark); window.addEventListener('resize', mark);
  var active = document.querySelector('.book-sidebar a.active'), side = document.querySelector('.book-sidebar');
  if (active && side && active.offsetTop + active.offsetHeight > side.clientHeight)  // keep this chapter in view
    side.scrollTop = active.offsetTop - side.clientHeight / 3;
  document.addEventListener('click', function (ev) {
    var img = ev.target;
    if (img.tagName === 'IMG' && (img.classList.contains('book-zoomable') || img.classList.contains('book-zoomed')))
      img.classList.toggle('book-zoomed');
  });
  document.addEventListener('keydown', function (ev) {
    if (ev.key === 'Escape') document.querySelectorAll('img.book-zoomed').forEach(function (i) { i.classList.remove('book-zoomed'); });
  });
})();
(function () {
  var input = document.getElementById('book-search-input'), box = document.getElementById('book-search-results');
  if (!input || !box) return;
  var index = null, hits = [], sel = -1, pending = false, waiting = null;
  function norm(s) { return (s || '').toLowerCase().normalize('NFKD').replace(/[\u0300-\u036f]/g, ''); }
  function esc(s) { return s.replace(/[&<>"]/g, function (c) { return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]; }); }
  function load(then) {
    if (index) return then();
    if (window.BOOK_SEARCH) { index = window.BOOK_SEARCH.map(function (e) {
      return {e: e, p: norm(e.p), h: norm(e.h), x: norm(e.x)}; }); return then(); }
    waiting = then;  // the latest query runs once the index has loaded
    if (pending) return; pending = true;
    var s = document.createElement('script'); s.src = input.dataset.index;
    s.onload = function () { pending = false; load(waiting); };
    s.onerror = function () { pending = false; box.hidden = false; box.innerHTML = '<div class="hit-none">The search index is missing.</div>'; };
    document.head.appendChild(s);
  }
  function mark(text, terms) {
    var out = esc(text);
    terms.forEach(function (t) {
      if (!t) return;
      out = out.replace(new RegExp('(' + t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + ')', 'gi'), '<mark>$1</mark>');
    });
    return out;
  }
  function snippet(e, terms) {
    var x = e.e.x, i = Math.max(0, e.x.indexOf(terms[0]));
    for (var k = 0; k < terms.length && e.x.indexOf(terms[k]) < 0; k++);
    var start = Math.max(0, i - 60), s = x.slice(start, start + 180);
    return (start > 0 ? '\u2026' : '') + s + (start + 180 < x.length ? '\u2026' : '');
  }
  function search(q) {
    var terms = norm(q).split(/\s+/).filter(Boolean), res = [];
    if (!terms.length) return [];
    index.forEach(function (e) {
      var score = 0;
      for (var i = 0; i < terms.length; i++) {
        var t = terms[i], s = 0;
        if (e.h.indexOf(t) >= 0) s += 10;
        if (e.p.indexOf(t) >= 0) s += 4;
        var n = 0, at = e.x.indexOf(t);
        while (at >= 0 && n < 20) { n++; at = e.x.indexOf(t, at + t.length); }
        s += n;
        if (!s) return;
        score += s;
      }
      if (terms.length > 1) {  // the words together, as typed
        var phrase = terms.join(' ');
        if (e.h.indexOf(phrase) >= 0) score += 20;
        score += 5 * Math.min(4, e.x.split(phrase).length - 1);
      }
      res.push([score, e]);
    });
    res.sort(function (a, b) { return b[0] - a[0]; });
    return res.slice(0, 25).map(function (r) { return r[1]; });
  }
  function place() {
    var r = input.getBoundingClientRect();
    box.style.left = r.left + 'px'; box.style.top = (r.bottom + 4) + 'px';
  }
  function show() {
    var q = input.value.trim();
    if (!q) { box.hidden = true; box.innerHTML = ''; hits = []; return; }
    load(function () {
      var terms = norm(q).split(/\s+/).filter(Boolean);
      hits = search(q); sel = -1; place(); box.hidden = false;
      box.innerHTML = hits.length ? hits.map(function (e) {
        return '<a href="' + esc(input.dataset.base + e.e.u) + '"><span class="hit-page">' + esc(e.e.p) + '</span>' +
          '<span class="hit-head">' + mark(e.e.h, terms) + '</span>' +
          (e.e.x ? '<span class="hit-text">' + mark(snippet(e, terms), terms) + '</span>' : '') + '</a>';
      }).join('') : '<div class="hit-none">No results for \u201c' + esc(q) + '\u201d</div>';
    });
  }
  input.addEventListener('input', show);
  input.addEventListener('focus', function () { load(function () {}); if (input.value.trim()) show(); });
  input.addEventListener('keydown', function (ev) {
    var links = box.querySelectorAll('a');
    if (ev.key === 'Escape') { input.value = ''; show(); return; }
    if (!links.length) return;
    if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
      ev.preventDefault();
      sel = (sel + (ev.key === 'ArrowDown' ? 1 : links.length - 1)) % links.length;
      links.forEach(function (a, i) { a.classList.toggle('selected', i === sel); });
      links[sel].scrollIntoView({block: 'nearest'});
    } else if (ev.key === 'Enter') { ev.preventDefault(); window.location.href = links[Math.max(sel, 0)].href; }
  });
  document.addEventListener('click', function (ev) {
    if (ev.target !== input && !box.contains(ev.target)) box.hidden = true;
  });
  window.addEventListener('resize', function () { if (!box.hidden) place(); });
})();
"""

TEMPLATE = """{%- extends 'index.html.j2' -%}
{% block html_head_js_requirejs %}{% endblock %}{% block jupyter_widgets %}{% endblock %}{% block html_head_js_mermaidjs %}{% endblock %}
{% block extra_css %}<link rel="icon" href="data:,"><style type="text/css">{{ resources.book.css }}</style>{% endblock %}
{%- block body_header -%}
<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<nav class="book-sidebar" aria-label="Chapters"><a class="book-name" href="index.html">{{ resources.book.name }}</a>
<div class="book-search"><input type="search" id="book-search-input" placeholder="Search" aria-label="Search the book"
 autocomplete="off" data-index="search.js" data-base=""></div>
<div class="book-search-results" id="book-search-results" hidden></div>
<ul class="book-chapters">
{%- for part in resources.book.nav %}
{%- if part.title %}<li class="book-part"><span class="book-part-title">{{ part.title | e }}</span><ul>{% endif %}
{%- for ch in part.chapters %}
<li><a href="{{ ch.href }}"{% if ch.href == resources.book.page %} class="active" aria-current="page"{% endif %}>{{ ch.label }}</a></li>
{%- endfor %}
{%- if part.title %}</ul></li>{% endif %}
{%- endfor %}</ul></nav>
<main class="book-main">
<header class="book-header"><h1 class="title">{{ resources.book.title }}</h1>
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
<span>{% if resources.book.prev %}<a href="{{ resources.book.prev.href }}" rel="prev">&larr; {{ resources.book.prev.label }}</a>{% endif %}</span>
<span>{% if resources.book.next %}<a href="{{ resources.book.next.href }}" rel="next">{{ resources.book.next.label }} &rarr;</a>{% endif %}</span>
</nav>
</main>
<!--BOOK-TOC-->
<script src="book.js"></script>
</body>
{% endblock body_footer %}
"""

_re_img_no_alt = re.compile(r'<img\b(?![^>]*\balt=)')

def html_exporter():
    "nbconvert's lab HTML exporter with the book template, no prompts, and the local MathJax."
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter  # imported here: slow, and not needed by the processing workers
    from nbconvert.exporters.templateexporter import TemplateExporter
    from nbconvert.filters.highlight import Highlight2HTML
    from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter

    class BookExporter(HTMLExporter):
        "HTMLExporter without its last pass, a BeautifulSoup parse and re-serialization of the whole page (alt texts)."
        def from_notebook_node(self, nb, resources=None, **kw):
            lang = nb.metadata.get('language_info', {})
            self.register_filter('highlight_code', self.filters.get('highlight_code', Highlight2HTML(
                pygments_lexer=lang.get('pygments_lexer', lang.get('name')), parent=self)))
            resources = self._init_resources(resources)
            self.register_filter('filter_data_type', WidgetsDataTypeFilter(notebook_metadata=self._nb_metadata, parent=self, resources=resources))
            page, resources = TemplateExporter.from_notebook_node(self, nb, resources, **kw)
            return _re_img_no_alt.sub('<img alt="No description has been provided for this image" ', page), resources

    ex = BookExporter(template_name='lab', extra_loaders=[DictLoader({'book.html.j2': TEMPLATE})],
                      template_file='book.html.j2', exclude_input_prompt=True, exclude_output_prompt=True,
                      mathjax_url=f'mathjax/MathJax.js?config={",".join(MATHJAX_CONFIGS)}')
    # The lab template runs every highlighted code input through bleach (most of the export time); pygments output is safe
    ex.register_filter('clean_html', lambda s: s.decode() if isinstance(s, bytes) else str(s))
    return ex

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

def inline_md(s):
    "A title's inline markdown as HTML (`code`, *emphasis*); math stays as TeX for MathJax."
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    out = markdown2html_mistune(s or '').strip()
    return out[3:-4] if out.startswith('<p>') and out.endswith('</p>') else out

def chapter_label(title, number):
    "Quarto's chapter label: `<span class='chapter-number'>3</span>&nbsp; <span class='chapter-title'>Title</span>`."
    t = inline_md(title)
    return f'<span class="chapter-number">{number}</span>&nbsp; <span class="chapter-title">{t}</span>' if number else t

# --- The HTML pass: identifiers, numbering, tables, links, contents --------------------------------------------------
_re_heading = re.compile(r'<h([1-6])\b([^>]*)>(.*?)</h\1>', re.DOTALL)
_re_hattr = re.compile(r'<span class="book-hattr"([^>]*?)\s*/?>(?:</span>)?')
_re_anchor_link = re.compile(r'<a class="anchor-link"[^>]*>.*?</a>', re.DOTALL)
_re_id = re.compile(r'\sid="([^"]+)"')
_re_name = re.compile(r'<a\s[^>]*\bname="([^"]+)"')
_re_tag = re.compile(r'<[^>]+>')
_re_a = re.compile(r'<a\b([^>]*)>')
_re_href = re.compile(r'\bhref="([^"]*)"')
_re_table = re.compile(r'<table\b.*?</table>', re.DOTALL)
_re_row = re.compile(r'<tr\b[^>]*>(.*?)</tr>', re.DOTALL)
_re_cell = re.compile(r'<(t[hd])\b([^>]*)>(.*?)</t[hd]>', re.DOTALL)
_re_number = re.compile(r'[-+\u2212\u00b1~\u2248<>\u2264\u2265]?\s*\$?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+\u2212]?\d+)?\s*'
                        r'(?:%|\u00d7|x|\$)?(?:\s*(?:\u00b1|\+/-)\s*(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+\u2212]?\d+)?%?)?')

def text_of(h):
    "Plain text of an HTML fragment."
    return html.unescape(_re_tag.sub('', h)).replace('\u00b6', '').strip()

def pandoc_id(text, used):
    "Pandoc's auto identifier for a heading's text (lowercase, punctuation out, spaces to hyphens), unique in `used`."
    s = ''.join(c for c in text.lower() if c.isalnum() or c in '_-.' or c.isspace())
    s = '-'.join(s.split())
    s = re.sub(r'^[^a-z\u00c0-\uffff]+', '', s) or 'section'
    out, i = s, 0
    while out in used: i += 1; out = f'{s}-{i}'
    used.add(out)
    return out

def _add_class(attrs, cls):
    if re.search(r'\bclass="', attrs): return re.sub(r'\bclass="([^"]*)"', lambda m: f'class="{m[1]} {cls}"', attrs, count=1)
    return f'{attrs} class="{cls}"'

def style_tables(page_html):
    "Wrap each table in a scrolling `.book-table` box and mark numeric columns `num` (right-aligned, never wrapped)."
    def table(m):
        t = m[0]
        rows = [[(tag, attrs, text_of(inner)) for tag, attrs, inner in _re_cell.findall(r)] for r in _re_row.findall(t)]
        ncol = max((len(r) for r in rows), default=0)
        num = []
        for j in range(ncol):
            vals = [c[2] for r in rows if j < len(r) and (c := r[j])[0] == 'td' and c[2]]
            num.append(bool(vals) and all(_re_number.fullmatch(v) for v in vals))
        def row(rm):
            j = -1
            def cell(cm):
                nonlocal j
                j += 1
                return f'<{cm[1]}{_add_class(cm[2], "num") if j < ncol and num[j] else cm[2]}>{cm[3]}</{cm[1]}>'
            return _re_cell.sub(cell, rm[0])
        return f'<div class="book-table">{_re_row.sub(row, t)}</div>'
    return _re_table.sub(table, page_html)

def fix_headings(page_html, number):
    "Pandoc identifiers, `{#id .class}` attributes and section numbers (`number.k` on `##`); returns the html and TOC."
    body_start = max(page_html.find('<header class="book-header">'), 0)
    head, body = page_html[:body_start], page_html[body_start:]
    used = set(_re_id.findall(_re_heading.sub('', body)))
    toc, count = [], 0
    def heading(m):
        nonlocal count
        level, attrs, inner = int(m[1]), m[2], m[3]
        if 'class="title"' in attrs: return m[0]
        hid, classes = None, []
        if (a := _re_hattr.search(inner)):
            hid = (re.search(r'data-id="([^"]+)"', a[1]) or [None, None])[1]
            classes = (re.search(r'data-class="([^"]+)"', a[1]) or [None, ''])[1].split()
            inner = _re_hattr.sub('', inner).rstrip()
        inner = _re_anchor_link.sub('', inner).rstrip()
        if hid: used.add(hid)
        else: hid = pandoc_id(text_of(inner), used)
        attrs = _re_id.sub('', attrs)
        if classes: attrs = _add_class(attrs, ' '.join(classes))
        if level == 2 and number and NUMBER_DEPTH >= 2 and 'unnumbered' not in classes:
            count += 1
            inner = f'<span class="header-section-number">{number}.{count}</span> {inner}'
            attrs += f' data-number="{number}.{count}"'
        if level in (2, 3) and 'unlisted' not in classes: toc.append((level, hid, inner))
        return f'<h{level} id="{hid}"{attrs}>{inner}<a class="anchor-link" href="#{hid}" aria-label="Link to this section">\u00b6</a></h{level}>'
    return head + _re_heading.sub(heading, body), toc

def toc_html(toc):
    "The right-hand table of contents: `##` entries with their `###` below."
    if not toc: return ''
    out, open_sub = ['<nav class="book-toc" id="TOC" aria-label="On this page"><div class="book-toc-title">On this page</div><ul>'], False
    for i, (level, hid, inner) in enumerate(toc):
        if level == 3 and not open_sub and i: out[-1] = out[-1].removesuffix('</li>'); out.append('<ul>'); open_sub = True
        if level == 2 and open_sub: out.append('</ul></li>'); open_sub = False
        out.append(f'<li><a href="#{hid}">{inner}</a></li>')
    if open_sub: out.append('</ul></li>')
    out.append('</ul></nav>')
    return ''.join(out)

def rewrite_links(page_html, doc_url, git_url, nb_pages):
    "nbdev's doc links made relative (`book-doclink`), GitHub source links to the source pages, notebooks to pages."
    def a(m):
        attrs = m[1]
        h = _re_href.search(attrs)
        if not h: return m[0]
        href = html.unescape(h[1])
        if doc_url and href.startswith(doc_url):
            href, attrs = href[len(doc_url):], _add_class(attrs, 'book-doclink')
        elif git_url and (s := re.match(re.escape(git_url) + r'/blob/[^/]+/([^#]+)(#L\d+)?$', href)):
            href = f'src/{s[1]}.html{s[2] or ""}'
            attrs = re.sub(r'\s(target|style)="[^"]*"', '', attrs)
        else:
            u = urlsplit(href)
            if u.scheme or u.netloc or not u.path.endswith('.ipynb'): return m[0]
            name = u.path.rsplit('/', 1)[-1]
            href = nb_pages.get(name, page_name(name)) + (f'#{u.fragment}' if u.fragment else '')
        return '<a' + _re_href.sub(lambda _: f'href="{html.escape(href)}"', attrs, count=1) + '>'
    return _re_a.sub(a, page_html)

def page_ids(page_html):
    return set(_re_id.findall(page_html)) | set(_re_name.findall(page_html))

def check_links(pages, ids, out):
    "Drop doc links to missing anchors (keep their code): `[(page, href)]` of those, and of every other dangling link."
    dangling, dropped = [], []
    def target_ok(page, href):
        u = urlsplit(html.unescape(href))
        if u.scheme or u.netloc or href.startswith(('mailto:', 'data:', 'javascript:')): return True
        path = u.path or page
        if path not in ids and not (out/path).is_file(): return False
        return not u.fragment or u.fragment in ids.get(path, set())
    for page, text in pages.items():
        def doclink(m):
            h = _re_href.search(m[1])
            if h and target_ok(page, h[1]): return m[0]
            dropped.append((page, html.unescape(h[1]) if h else ''))
            return m[2]
        text = re.sub(r'<a\b([^>]*\bbook-doclink\b[^>]*)>(.*?)</a>', doclink, text, flags=re.DOTALL)
        for m in _re_a.finditer(text):
            if (h := _re_href.search(m[1])) and not target_ok(page, h[1]): dangling.append((page, html.unescape(h[1])))
        pages[page] = text
    return dangling, dropped

# --- Source pages ----------------------------------------------------------------------------------------------------
def source_pages(out, nb_pages, book_name):
    "Each module of the package as a highlighted page with line anchors: `src/netmoments/NAME.py.html#L12`."
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    fmt, ids = HtmlFormatter(nowrap=True), {}
    style = HtmlFormatter(style='default').get_style_defs('.book-src')
    shutil.rmtree(out/'src', ignore_errors=True)
    for f in sorted((ROOT/'netmoments').rglob('*.py')):
        if f.name == '_modidx.py': continue
        rel = f.relative_to(ROOT).as_posix()
        src = f.read_text(encoding='utf-8')
        m = re.search(r'File to edit: \.\./nbs/(\S+?\.ipynb)', src)
        up = '../' * rel.count('/') + '../'
        chapter = nb_pages.get(m[1].rsplit('/', 1)[-1]) if m else None
        lines = highlight(src, PythonLexer(), fmt).split('\n')
        if lines and not lines[-1]: lines.pop()
        body = ''.join(f'<span class="line" id="L{i}"><a class="ln" href="#L{i}">{i}</a>{l}</span>' for i, l in enumerate(lines, 1))
        back = f' &middot; <a href="{up}{chapter}">the chapter</a>' if chapter else ''
        page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{rel} &ndash; {html.escape(book_name)}</title>'
                f'<link rel="icon" href="data:,"><style>{SRC_CSS}{style}</style></head><body>'
                f'<header><h1>{rel}</h1><a href="{up}index.html">{html.escape(book_name)}</a>{back}</header>'
                f'<pre class="book-src">{body}</pre></body></html>\n')
        dst = out/'src'/(rel + '.html')
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(page, encoding='utf-8')
        ids[f'src/{rel}.html'] = {f'L{i}' for i in range(1, len(lines) + 1)}
    return ids

# --- Search index ----------------------------------------------------------------------------------------------------
class _PageText(HTMLParser):
    "Sections of a page: `[(id, heading text, body text)]`, code inputs, plain-text outputs and navigation left out."
    SKIP_TAGS = {'script', 'style', 'nav', 'header', 'svg', 'button', 'select', 'textarea'}
    SKIP_CLASSES = {'jp-InputArea-editor', 'jp-RenderedText', 'anchor-link', 'book-source', 'jp-RenderedLatex'}
    VOID = {'br', 'img', 'hr', 'meta', 'link', 'input', 'source', 'wbr', 'area', 'base', 'col', 'embed', 'param', 'track'}
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections, self.skip, self.heading = [['', '', []]], None, None
    def handle_starttag(self, tag, attrs):
        if tag in self.VOID: return
        if self.skip: self.skip[1] += tag == self.skip[0]; return
        a = dict(attrs)
        if tag in self.SKIP_TAGS or set((a.get('class') or '').split()) & self.SKIP_CLASSES: self.skip = [tag, 1]; return
        if tag in ('h1', 'h2', 'h3', 'h4') and a.get('id'): self.heading = [tag, a['id'], []]
    def handle_endtag(self, tag):
        if self.skip:
            if tag == self.skip[0]:
                self.skip[1] -= 1
                if not self.skip[1]: self.skip = None
            return
        if self.heading and tag == self.heading[0]:
            self.sections.append([self.heading[1], ' '.join(''.join(self.heading[2]).split()), []]); self.heading = None
    def handle_data(self, data):
        if self.skip: return
        (self.heading[2] if self.heading else self.sections[-1][2]).append(data)

def search_entries(page, label, page_html):
    "Search entries of a page: one per section, `{u: url, p: page label, h: heading, x: text}`."
    p = _PageText()
    p.feed(page_html[page_html.find('<main'):])
    out = []
    for hid, head, text in p.sections:
        text = ' '.join(''.join(text).split())
        if not hid or head or text: out.append({'u': f'{page}#{hid}' if hid else page, 'p': label, 'h': head or label, 'x': text})
    return out

# --- The book --------------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=str(ROOT/'_book'), help='output folder (default: _book)')
    ap.add_argument('--cache', help='folder of processed notebooks to reuse (default: OUT/.cache)')
    ap.add_argument('--no-cache', action='store_true', help='process every notebook again')
    ap.add_argument('--if-stale', action='store_true',
                    help='do nothing when OUT was built from the same notebooks, package, _quarto.yml and builder')
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    os.chdir(ROOT)  # nbdev finds settings.ini from here, and runs the show_doc cells here, as nbdev_proc_nbs does
    stamp = inputs_digest()
    if args.if_stale and (out/'.book-stamp').is_file() and (out/'.book-stamp').read_text().strip() == stamp:
        print(f'book: {out} is up to date')
        return 0
    (out/'.book-stamp').unlink(missing_ok=True)
    from nbdev.config import get_config
    cfg = get_config()
    doc_url = '/'.join(o for o in (cfg.doc_host.rstrip('/'), cfg.doc_baseurl.strip('/')) if o) + '/'  # nbdev's doc links
    git_url = cfg.git_url.rstrip('/')
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out)
    entries = toc()
    missing = [p for p, _ in entries if not p.exists()]
    for p in missing: print(f'book: warning: chapter {p.relative_to(ROOT)} is listed in _quarto.yml but does not exist yet')
    cache = None if args.no_cache else Path(args.cache).resolve() if args.cache else out/'.cache'
    if cache: cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        done, failed = process([p for p, _ in entries if p.exists()], Path(tmp), cache)
    t1 = time.perf_counter()
    parts = dict(entries)
    # Chapters and their numbers, as Quarto assigns them
    chaps, n = [], 0
    for path, nb in done.items():
        m = nb.cells and nb.cells[0].cell_type == 'raw' and _re_fm.match(nb.cells[0].source.strip())
        fm = yaml.safe_load(m[1]) if m else {}
        title, classes = split_title(str(fm.get('title', path.stem)))
        number = None
        if path.name != 'index.ipynb' and 'unnumbered' not in classes: n += 1; number = n
        chaps.append(dict(path=path, page=fm.get('output-file') or page_name(path), fm=fm, title=title, number=number,
                          part=parts.get(path), label=chapter_label(title, number), nb=nb))
    nb_pages = {c['path'].name: c['page'] for c in chaps}
    refs = {}
    for c in chaps: prepare(c['nb'], c['page'], c['fm'], refs, c['number'])
    nav = []
    for c in chaps:
        if not nav or nav[-1]['title'] != c['part']: nav.append(dict(title=c['part'], chapters=[]))
        nav[-1]['chapters'].append(dict(href=c['page'], label=c['label']))
    exporter = html_exporter()
    pages, tocs, labels = {}, {}, {}
    for i, c in enumerate(chaps):
        link = lambda o: dict(href=o['page'], label=o['label'])
        book = dict(name=html.escape(str(cfg.title)), css=CSS, nav=nav, page=c['page'], title=c['label'],
                    subtitle=c['fm'].get('description'), prev=link(chaps[i-1]) if i else None,
                    next=link(chaps[i+1]) if i+1 < len(chaps) else None)
        c['nb'].metadata.title = f'{text_of(c["label"])} \u2013 {cfg.title}' if c['page'] != 'index.html' else str(cfg.title)
        page_html, _ = exporter.from_notebook_node(finish(c['nb'], c['page'], refs, doc_url, c['path'].parent), resources={'book': book})
        page_html = rewrite_links(page_html, doc_url, git_url, nb_pages)
        page_html, tocs[c['page']] = fix_headings(page_html, c['number'])
        pages[c['page']] = style_tables(page_html)
        labels[c['page']] = text_of(c['label']).replace('\u00a0', '')
    ids = {p: page_ids(h) for p, h in pages.items()}
    ids.update(source_pages(out, nb_pages, str(cfg.title)))
    dangling, dropped = check_links(pages, ids, out)
    if dropped: print(f'book: {len(dropped)} doc links to names without a documented anchor left as code: '
                      + ', '.join(sorted({h.rsplit("#", 1)[-1] for _, h in dropped})))
    for old in out.glob('*.html'):  # pages of chapters no longer in the book
        if old.name not in pages: old.unlink()
    search = []
    for page, text in pages.items():
        text = text.replace('<!--BOOK-TOC-->', toc_html(tocs[page]))
        (out/page).write_text(text, encoding='utf-8')
        search += search_entries(page, labels[page], text)
        print(f'book: {page}')
    (out/'search.js').write_text('window.BOOK_SEARCH = ' + json.dumps(search, ensure_ascii=False, separators=(',', ':')) + ';\n',
                                 encoding='utf-8')
    (out/'book.js').write_text(BOOK_JS, encoding='utf-8')
    if chaps and not (out/'index.html').exists():
        (out/'index.html').write_text(f'<!DOCTYPE html><meta http-equiv="refresh" content="0; url={chaps[0]["page"]}">')
    if not failed: (out/'.book-stamp').write_text(stamp + '\n')
    for page, href in dangling: print(f'book: warning: {page}: link to a missing page or anchor: {href}')
    for p, msg in failed.items(): print(f'book: ERROR: chapter {p.relative_to(ROOT)} failed to process:\n  {msg}', file=sys.stderr)
    print(f'book: nbdev processing {t1 - t0:.0f} s, pages {time.perf_counter() - t1:.0f} s')
    print(f'book: {len(chaps)} of {len(entries)} chapters written to {out}' + (f', {len(missing)} missing' if missing else '')
          + (f'; {len(dangling)} dangling links' if dangling else ''))
    return 1 if failed else 0

if __name__ == '__main__': sys.exit(main())
