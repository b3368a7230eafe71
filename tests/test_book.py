"""The offline book: `tools/book.py` builds it once per test session, headless Chromium reads it with no network.

The build needs MathJax (Debian libjs-mathjax); the browser tests also need Chromium, ChromeDriver and selenium.
`make system` (as root) installs the Debian packages; without them the tests are skipped, saying what is missing.

BOOK_DIR=path builds into that folder with `--if-stale`: reused as is when `make book` (or an earlier run) built it from
the same sources, else rebuilt, processing only the notebooks that changed. Without it the book is built into a
temporary folder, its processed notebooks cached in pytest's cache (`.pytest_cache/d/book-notebooks`).
BOOK_SCREENSHOTS=folder keeps the screenshots of the browser test (default: a pytest temporary folder).
"""
import functools, http.server, os, re, shutil, subprocess, sys, threading, time
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
MATHJAX = Path(os.environ.get('MATHJAX_DIR', '/usr/share/javascript/mathjax'))/'MathJax.js'
CHROMEDRIVER = Path(os.environ.get('CHROMEDRIVER', '/usr/bin/chromedriver'))
CHAPTER = 'core.html'  # the page of nbs/00_core.ipynb
# The browser test screenshots these: the index, a chapter with math, one with figures, one with result tables
SCREENSHOTS = {'index.html': None, 'relu.html': 'h2', 'synthetic.html': 'figure', 'bounds.html': 'table.netmoments-table'}
CHROME_ARGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
               '--disable-background-networking', '--disable-component-update', '--disable-sync',
               '--disable-dev-shm-usage', '--window-size=1280,1400', '--hide-scrollbars']
MATH_ERRORS = '.MathJax_Error, merror, .mjx-merror, .noError'
PAPERS = ['bibi2018', 'alfadly2020', 'peck2017', 'peck2017thesis', 'alfadly2019', 'lyu2015']  # the References' anchors

def _builder():
    "tools/book.py as a module."
    sys.path.insert(0, str(ROOT/'tools'))
    try: import book as builder
    finally: sys.path.pop(0)
    return builder

@pytest.fixture(scope='session')
def book(tmp_path_factory, request):
    "The book, built once per session by `tools/book.py --out DIR` (DIR: $BOOK_DIR, reused when fresh, or a temporary one)."
    if not MATHJAX.exists(): pytest.skip(f'MathJax missing ({MATHJAX}): `make system` as root installs libjs-mathjax')
    if os.environ.get('BOOK_DIR'): out, args = Path(os.environ['BOOK_DIR']).resolve(), ['--if-stale']
    else:  # a fresh folder; the processed notebooks are kept in pytest's cache, so a rerun processes only what changed
        out, cache = tmp_path_factory.mktemp('book'), getattr(request.config, 'cache', None)
        args = ['--cache', str(cache.mkdir('book-notebooks'))] if cache else []
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(ROOT/'tools/book.py'), '--out', str(out)] + args,
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, f'tools/book.py failed:\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}'
    print(f'\nbook: built in {time.perf_counter() - t0:.0f} s into {out}')
    return out

class _Page(HTMLParser):
    "Ids/names, resources (`script src`, `link href`, `img src`) and links (`a href` with the link's class) of a page."
    def __init__(self):
        super().__init__()
        self.ids, self.resources, self.links = set(), [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'a' and a.get('name'): self.ids.add(a['name'])
        if tag in ('script', 'img') and a.get('src'): self.resources.append(a['src'])
        if tag == 'link' and a.get('href'): self.resources.append(a['href'])
        if tag == 'a' and a.get('href') is not None: self.links.append((a['href'], a.get('class') or ''))

@functools.lru_cache(None)
def _parse(page):
    p = _Page()
    p.feed(Path(page).read_text(encoding='utf-8'))
    return p

def _pages(book): return sorted(book.glob('*.html'))
def _all_pages(book): return _pages(book) + sorted((book/'src').rglob('*.html'))
def _chapter_notebooks(): return [p for p in _builder().chapters() if p.exists()]
def _text(page):
    "A page's visible text, without scripts, styles and inline code (which may name a directive on purpose)."
    return re.sub(r'<[^>]+>', ' ', re.sub(r'<(script|style|code)\b.*?</\1>', '', page.read_text(), flags=re.DOTALL))

def test_build(book):
    "One page per existing chapter, every resource local, no Quarto syntax or private notes left on a page."
    pages = [p.name for p in _pages(book)]
    assert {'index.html', CHAPTER, 'references.html'} <= set(pages), pages
    assert len(pages) == len(_chapter_notebooks())
    assert (book/'mathjax/MathJax.js').exists() and (book/'mathjax/config/TeX-AMS_CHTML-full.js').exists()
    size = sum(f.stat().st_size for f in (book/'mathjax').rglob('*') if f.is_file())
    assert size < 4e6, f'the MathJax copy should be the CommonHTML subset, not {size/1e6:.1f} MB'
    bad = []
    for page in _pages(book):
        for src in _parse(page).resources:
            if src.startswith('data:'): continue
            if urlsplit(src).scheme: bad.append(f'{page.name} loads {src} from the network')
            elif not (book/urlsplit(src).path).is_file(): bad.append(f'{page.name}: {src} is missing')
        text = _text(page)
        for junk in ('#| ', '{target=', '\n:::', 'output-file:', '{.unnumbered}', 'book-hattr'):
            if junk in text: bad.append(f'{page.name} shows Quarto/nbdev syntax {junk!r}')
        for note in re.findall(r'.{0,40}(?:\bSPEC\b| 00[0-4]\b|paper 00).{0,40}', text):
            bad.append(f'{page.name} mentions private notes: {" ".join(note.split())!r}')
    assert not bad, '\n'.join(bad)

def test_links(book):
    "Every internal link of every page, source pages included, reaches an existing page and an existing id/name in it."
    dangling = defaultdict(list)
    for page in _all_pages(book):
        for href, _ in _parse(page).links:
            u = urlsplit(href)
            if u.scheme or u.netloc or href.startswith(('mailto:', 'javascript:')): continue
            target = (page.parent/unquote(u.path)).resolve() if u.path else page
            if not target.is_file(): dangling[page.relative_to(book).as_posix()].append(f'{href} (no page)')
            elif u.fragment and unquote(u.fragment) not in _parse(target).ids:
                dangling[page.relative_to(book).as_posix()].append(f'{href} (no anchor)')
    assert not dangling, 'dangling links:\n' + '\n'.join(f'  {p}: {", ".join(sorted(set(h)))}' for p, h in sorted(dangling.items()))

def test_references(book):
    "The References chapter has the papers' anchors, and every citation `references.html#x` of the book resolves."
    ids = _parse(book/'references.html').ids
    assert set(PAPERS) <= ids, set(PAPERS) - ids
    missing = defaultdict(set)
    for page in _pages(book):
        for href, _ in _parse(page).links:
            u = urlsplit(href)
            if u.path == 'references.html' or (page.name == 'references.html' and not u.path and u.fragment):
                if u.fragment and u.fragment not in ids: missing[u.fragment].add(page.name)
    assert not missing, 'citations without an entry in the References: ' + '; '.join(
        f'#{a} (cited in {", ".join(sorted(p))})' for a, p in sorted(missing.items()))

def test_parts_and_numbers(book):
    "Sidebar parts and chapter numbers follow _quarto.yml; titles, page titles and prev/next carry the numbers."
    import yaml
    cfg = yaml.safe_load((ROOT/'_quarto.yml').read_text())['book']['chapters']
    parts = [o['part'] for o in cfg if isinstance(o, dict) and 'part' in o]
    html = (book/CHAPTER).read_text()
    assert re.findall(r'<span class="book-part-title">([^<]*)</span>', html) == parts
    html = html.replace('\u00a0', '&nbsp;')
    labels = re.findall(r'<li><a\b[^>]*\bhref="([^"]+)"[^>]*>(.*?)</a></li>', html[html.index('book-chapters'):html.index('</nav>')])
    builder = _builder()
    pages = [builder.page_name(p) for p in _chapter_notebooks()]
    assert [h for h, _ in labels] == pages
    numbers = [re.search(r'class="chapter-number">(\d+)<', lab) for _, lab in labels]
    assert numbers[0] is None and numbers[-1] is None, 'the index and the References are unnumbered'
    assert [int(m[1]) for m in numbers[1:-1]] == list(range(1, len(pages) - 1))
    assert re.search(r'<h1 class="title"><span class="chapter-number">1</span>&nbsp; <span class="chapter-title">Core checks</span></h1>', html)
    assert '<title>1&nbsp; Core checks' in html
    assert re.search(r'rel="prev">&larr; Preface</a>', html)
    assert re.search(r'rel="next"><span class="chapter-number">2</span>&nbsp; <span class="chapter-title">Gaussian toolbox</span> &rarr;', html)
    assert re.search(r'<h2 id="[^"]+" data-number="1\.1"><span class="header-section-number">1\.1</span>', html)
    refs = (book/'references.html').read_text()
    assert '<h1 class="title">References</h1>' in refs and 'class="header-section-number"' not in refs

def test_index(book):
    "The index links every chapter, in the order of _quarto.yml, with no private notes."
    html = (book/'index.html').read_text()
    main = html[html.index('<main'):]
    links = re.findall(r'<a href="([^"#]+)"', main[main.index('</header>'):])
    builder = _builder()
    pages = [builder.page_name(p) for p in _chapter_notebooks() if p.name != 'index.ipynb']
    assert [l for l in dict.fromkeys(links) if l in pages] == pages, 'the index must link every chapter, in order'
    text = _text(book/'index.html')
    assert 'SPEC' not in text and 'TPAMI' not in text and 'CVPR 2018' not in text

def _doc_block(html, anchor):
    "The show_doc block (heading to the next show_doc separator) of `anchor`."
    i = html.index(f'id="{anchor}"')
    j = html.find('<hr', i)
    return html[i:j if j > 0 else None]

def test_namedtuple_fields(book):
    "Each result NamedTuple lists its fields with their types and trailing comments, not `*args, **kwargs`."
    import importlib, netmoments._modidx as idx
    checked = 0
    for name, (url, py) in [(k, v) for m in idx.d['syms'].values() for k, v in m.items()]:
        page, anchor = url.split('#')
        mod, _, cls = name.rpartition('.')
        if cls.startswith('_'): continue
        try: obj = getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError): continue
        if not (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, '_fields')): continue
        html = (book/page).read_text()
        if f'id="{anchor}"' not in html: continue  # not documented on its page (not exported)
        block = _doc_block(html, anchor)
        assert '*args' not in block, (name, 'renders as *args, **kwargs')
        assert '<strong>Field</strong>' in block, name
        for f in obj._fields: assert f'<td><code>{f}</code></td>' in block, (name, f)
        checked += 1
    assert checked >= 20, f'only {checked} NamedTuples documented'
    ara = _doc_block((book/'ara.html').read_text(), 'aramoments')
    assert re.search(r'<td><code>mean</code></td>\s*<td><code>Tensor</code></td>\s*<td>\(\.\.\., d\) E\[g\(x\)\]</td>', ara), ara
    assert re.search(r'<td><code>cov</code></td>\s*<td><code>Tensor</code>\|<code>None</code></td>', ara)
    bound = _doc_block((book/'bounds.html').read_text(), 'bound')
    assert re.search(r'<td><code>bound</code></td>\s*<td><code>Tensor</code></td>\s*<td>\(N,\) float64 lower bound', bound), bound
    assert re.search(r'<td><code>report</code></td>\s*<td><code>list</code></td>\s*<td>\S', bound)

def test_source_links(book):
    "Every `source` link points at the symbol's line in the book's page of its module."
    n = 0
    for page in _pages(book):
        html = page.read_text()
        for href, name in re.findall(r'<a (?=[^>]*class="book-source")[^>]*href="(src/[^"#]+#L\d+)"[^>]*>source</a></p>\s*<h[234] id="[^"]*">([^<]+)<', html):
            path, line = href.split('#L')
            src = (book/path).read_text()
            m = re.search(rf'<span class="line" id="L{line}">(.*?)</span>(?=<span class="line"|</pre>)', src)
            assert m, (page.name, href)
            code = re.sub(r'<[^>]+>', '', re.sub(r'<a class="ln"[^>]*>\d+</a>', '', m[1]))
            assert re.search(rf'\b(def|class)\s+{re.escape(name.split(".")[-1])}\b|@patch|^\s*@', code), (page.name, href, code)
            n += 1
    assert n > 100, n

def test_show_doc_table():
    "Docments render as a table whose details are markdown: links and code, not raw `[x](y)` text."
    import html as html_mod, nbdev.showdoc
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    builder = _builder()
    def f(a:int,      # see [the Gaussian toolbox](01_gaussian.ipynb#section) and `b`
          b:str='x|y', # a value with a | in it
         )->float:     # the result
        "Do nothing."
    md = builder.show_doc_markdown(nbdev.showdoc.BasicMarkdownRenderer(f, name='f'))
    html = markdown2html_mistune(md)
    assert '<a href="01_gaussian.ipynb#section">the Gaussian toolbox</a>' in html and '[the' not in html
    assert re.search(r"<td><code>b</code></td>\s*<td><code>str</code></td>\s*<td><code>'x\|y'</code></td>\s*<td>a value with a \| in it</td>", html), html
    assert '<td><strong>Returns</strong></td>' in html and 'the result' in html
    assert "def f(a:int, b:str='x|y')->float" in html_mod.unescape(re.sub(r'<[^>]+>', '', html))

def test_figure_captions(book):
    "Each `#| fig-cap` of a chapter becomes a caption under its figure, numbered as Quarto does (`Figure 3.2`)."
    import nbformat
    builder = _builder()
    for path in _chapter_notebooks():
        nb = nbformat.read(path, as_version=4)
        caps = [c for c in nb.cells if c.cell_type == 'code' and re.search(r'^#\|\s*fig-cap:', c.source, re.MULTILINE)]
        if not caps: continue
        html = (book/builder.page_name(path)).read_text()
        chapter = re.search(r'<h1 class="title"><span class="chapter-number">(\d+)</span>', html)[1]
        found = re.findall(r'<figcaption><p>Figure ([\d.]+):', html)
        assert found == [f'{chapter}.{i+1}' for i in range(len(caps))], (path.name, found)

def test_tables(book):
    "Tables sit in a scrolling `.book-table` box, with numeric columns marked `num` (right-aligned, unbroken)."
    html = (book/'core.html').read_text()
    tables = re.findall(r'<div class="book-table"><table class="netmoments-table">.*?</table></div>', html, re.DOTALL)
    assert tables and not re.search(r'(?<!<div class="book-table">)<table', html)
    assert any(' class="num"' in t for t in tables)
    index = (book/'index.html').read_text()
    assert index.count('<div class="book-table"><table>') >= 6  # one chapter table per part

@pytest.fixture(scope='session')
def browser(tmp_path_factory):
    "Headless Chromium through the system ChromeDriver; Selenium Manager stays offline."
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium missing: pip install -e ".[dev]"')
    from selenium.webdriver.chrome.service import Service
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    if not chromium or not CHROMEDRIVER.exists():
        pytest.skip('chromium or chromedriver missing: `make system` as root installs chromium and chromium-driver')
    os.environ['SE_OFFLINE'] = 'true'
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in CHROME_ARGS + [f'--user-data-dir={tmp_path_factory.mktemp("chromium-profile")}']: opts.add_argument(arg)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_script_timeout(90)
    yield driver
    driver.quit()

@pytest.fixture(scope='session')
def server(book):
    "The book on a local static HTTP server."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(book)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_port}/'
    httpd.shutdown()

# Resolves once MathJax has started up and everything queued so far (the page's typeset) has run.
WAIT_MATHJAX = """
const done = arguments[arguments.length - 1], t0 = Date.now();
(function wait() {
  if (window.MathJax && MathJax.isReady) MathJax.Hub.Queue(() => done('typeset'));
  else if (Date.now() - t0 > 60000) done(window.MathJax ? 'MathJax never got ready' : 'MathJax not loaded');
  else setTimeout(wait, 50);
})();
"""
BAD_LOADS = """
const base = arguments[0];
return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => 'img ' + i.src.slice(0, 80))
  .concat(performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(base)));
"""

def _read(driver, url, base):
    "Load `url`, wait for MathJax; return the number of typeset formulas, after checking loads and errors."
    driver.get_log('browser')  # drop what earlier pages logged
    driver.get(url)
    assert driver.execute_async_script(WAIT_MATHJAX) == 'typeset'
    severe = [e['message'] for e in driver.get_log('browser') if e['level'] == 'SEVERE']
    assert not severe, severe
    assert driver.execute_script(BAD_LOADS, base) == []
    errors = driver.find_elements('css selector', MATH_ERRORS)
    assert not errors, [e.get_attribute('outerHTML')[:200] for e in errors]
    return len(driver.find_elements('css selector', '.MathJax_CHTML'))

@pytest.mark.parametrize('via', ['file', 'http'])
def test_pages_in_browser(book, browser, server, via):
    "Index and chapter load everything locally, and MathJax typesets their math without errors."
    base = book.as_uri() + '/' if via == 'file' else server
    assert _read(browser, base + 'index.html', base) > 0
    hrefs = [a.get_attribute('href').rsplit('/', 1)[-1] for a in browser.find_elements('css selector', '.book-sidebar li a')]
    assert hrefs[:2] == ['index.html', CHAPTER] and hrefs[-1] == 'references.html'
    n_math = _read(browser, base + CHAPTER, base)
    assert n_math >= 3, f'only {n_math} typeset formulas on {CHAPTER}'
    body = browser.find_element('css selector', 'main').text
    assert '\\lambda' not in body and '$' not in body, 'raw TeX left on the page'
    assert browser.find_element('css selector', '.book-header h1').text.split() == ['1', 'Core', 'checks']
    assert 'nothing clamped silently' in browser.find_element('css selector', '.book-header .subtitle').text
    assert browser.find_element('id', 'check_cov').text.startswith('check_cov')  # nbdev's show_doc, executed
    # the table styling applies: borders, numbers right-aligned and kept on one line
    num = browser.find_element('css selector', '.book-table td.num')
    assert num.value_of_css_property('text-align') == 'right' and num.value_of_css_property('white-space') == 'nowrap'
    assert num.value_of_css_property('border-top-style') == 'solid'

def test_toc_and_search(book, browser):
    "The right-hand contents link ids of the page; the offline search finds a chapter and links to it."
    base = book.as_uri() + '/'
    for page in ('relu.html', 'bounds.html', 'index.html'):
        _read(browser, base + page, base)
        toc = browser.find_elements('css selector', '#TOC a')
        assert len(toc) >= 3, page
        missing = browser.execute_script("""return [...document.querySelectorAll('#TOC a')]
          .map(a => decodeURIComponent(a.getAttribute('href').slice(1))).filter(id => !document.getElementById(id));""")
        assert not missing, (page, missing)
        assert toc[0].is_displayed()
    from selenium.webdriver.support.ui import WebDriverWait
    _read(browser, base + 'index.html', base)
    box = browser.find_element('id', 'book-search-input')
    box.send_keys('bivariate normal')
    WebDriverWait(browser, 20).until(lambda d: d.find_elements('css selector', '#book-search-results a'))
    hits = [a.get_attribute('href') for a in browser.find_elements('css selector', '#book-search-results a')]
    assert any('/gaussian.html' in h for h in hits[:8]), hits[:8]
    box.clear(); box.send_keys('Peck 2017 dissertation')
    WebDriverWait(browser, 20).until(lambda d: any('references.html' in (a.get_attribute('href') or '')
                                                  for a in d.find_elements('css selector', '#book-search-results a')))
    box.clear(); box.send_keys('AraMoments')
    WebDriverWait(browser, 20).until(lambda d: any('ara.html#aramoments' in (a.get_attribute('href') or '')
                                                  for a in d.find_elements('css selector', '#book-search-results a')))
    link = next(a for a in browser.find_elements('css selector', '#book-search-results a') if 'ara.html#aramoments' in a.get_attribute('href'))
    link.click()
    WebDriverWait(browser, 20).until(lambda d: d.current_url.endswith('ara.html#aramoments'))

def test_screenshots(book, browser, tmp_path_factory):
    "Screenshots of the index and three chapters (math, figures, tables) are not blank; kept in $BOOK_SCREENSHOTS."
    from PIL import Image
    folder = Path(os.environ.get('BOOK_SCREENSHOTS') or tmp_path_factory.mktemp('screenshots'))
    folder.mkdir(parents=True, exist_ok=True)
    base = book.as_uri() + '/'
    for page, target in SCREENSHOTS.items():
        _read(browser, base + page, base)
        if target:
            browser.execute_script('arguments[0].scrollIntoView(); window.scrollBy(0, -120);',
                                   browser.find_element('css selector', f'main {target}'))
        png = folder/page.replace('.html', '.png')
        assert browser.save_screenshot(str(png))
        img = Image.open(png).convert('L')
        hist = img.histogram()
        assert max(hist) < 0.97 * sum(hist), f'{png} is (nearly) one colour'
        assert len(img.resize((320, 350)).getcolors(256) or range(257)) > 32, f'{png} has too few shades to hold text'
    print(f'\nbook: screenshots in {folder}')

def test_quarto_syntax():
    "What nbdev leaves for Quarto (cell options, pandoc markdown) is rendered, not shown as text."
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
    builder = _builder()
    png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=='
    nb = new_notebook(cells=[
        new_markdown_cell('## Moments {#sec-moments}\nSee @fig-one and [src](https://x.org/a.py){target="_blank" .src}, '
                          '[a chapter](09_linearize.ipynb#two-stage) and [refs](99_references.ipynb#bibi2018).\n\n'
                          '::: {.callout-note}\nA *note*.\n:::\n\n## Aside {.unnumbered}\n\n| a | b |\n|---|---|\n| x | 1.5 |'),
        new_code_cell('#| code-fold: show\n#| code-summary: "Exported source"\ndef f(x): return x'),
        new_code_cell('#| echo: false\n#| output: asis\nshow_doc(f)',
                      outputs=[new_output('execute_result', {'text/markdown': '[source](https://x.org/f.py){target="_blank"}\n\n### f'})]),
        new_code_cell('#| label: fig-one\n#| fig-cap: "A pixel, $x^2$."\nplt.imshow(x);',
                      outputs=[new_output('display_data', {'image/png': png})]),
        new_code_cell('#| include: false\nsecret = 1'),
        new_code_cell('#| output: false\nnoisy()', outputs=[new_output('stream', name='stdout', text='noise')])])
    refs = {}
    nb = builder.finish(builder.prepare(nb, 'p.html', {'title': 'T'}, refs, 3), 'p.html', refs, 'https://doc/', ROOT)
    assert refs == {'fig-one': ('p.html', 'Figure 3.1')}
    nav = [dict(title=None, chapters=[dict(href='p.html', label='T')])]
    book = dict(name='B', css='', nav=nav, page='p.html', title='T', subtitle='*sub*', prev=None, next=None)
    html, _ = builder.html_exporter().from_notebook_node(nb, resources={'book': book})
    html = builder.rewrite_links(html, 'https://doc/', 'https://github.com/o/r', {'09_linearize.ipynb': 'linearize.html'})
    html, toc = builder.fix_headings(html, 3)
    html = builder.style_tables(html)
    body = html[html.index('<body'):]
    assert re.search(r'<h2 id="sec-moments" data-number="3.1"><span class="header-section-number">3.1</span> Moments<a class="anchor-link" href="#sec-moments"', body)
    assert '<h2 id="aside" class="unnumbered">Aside<' in body and '{#' not in body and '{.' not in body
    assert [t[:2] for t in toc] == [(2, 'sec-moments'), (2, 'aside'), (3, 'f')]
    assert '<a href="#fig-one">Figure 3.1</a>' in body and '@fig' not in body
    assert '<a href="https://x.org/a.py" class="src" target="_blank">src</a>' in body and '{target' not in body
    assert '<a href="linearize.html#two-stage">a chapter</a>' in body and '<a href="references.html#bibi2018">refs</a>' in body
    assert '<div class="callout-note">' in body and ':::' not in body and '<em>note</em>' in body
    assert re.search(r'<details class="code-fold" open(="")?><summary>Exported source</summary>', body) and 'code-fold:' not in body
    assert 'show_doc' not in body and 'href="https://x.org/f.py" target="_blank">source</a>' in body
    assert re.search(r'<figure class="book-figure" id="fig-one">.*<img[^>]*src="data:image/png;base64,'
                     r'.*<figcaption><p>Figure 3.1: A pixel, \$x\^2\$.</p>', body, re.DOTALL)
    assert 'secret' not in body and 'noise' not in body and '>noisy<' in body
    assert '<div class="subtitle"><p><em>sub</em></p>' in body
    assert re.search(r'<div class="book-table"><table>.*<td>x</td>\s*<td class="num">1.5</td>', body, re.DOTALL)
    assert builder.pandoc_id('Moments of $\\mathrm{relu}(z)$: the 2nd', set()) == 'moments-of-mathrmreluz-the-2nd'
    assert builder.pandoc_id('Table', {'table'}) == 'table-1' and builder.pandoc_id('3 ways', set()) == 'ways'
    assert builder.split_title('References {.unnumbered}') == ('References', {'unnumbered'})
