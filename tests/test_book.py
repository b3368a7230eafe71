"""The offline book: `tools/book.py` builds it into a temporary folder, headless Chromium reads it with no network.

The build test needs MathJax (Debian libjs-mathjax); the browser tests also need Chromium, ChromeDriver and selenium.
`make system` (as root) installs the Debian packages; without them the tests are skipped, saying what is missing.
Set BOOK_SCREENSHOT=/path.png to keep a screenshot of the chapter page.
"""
import functools, http.server, os, re, shutil, subprocess, sys, threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
MATHJAX = Path(os.environ.get('MATHJAX_DIR', '/usr/share/javascript/mathjax'))/'MathJax.js'
CHROMEDRIVER = Path(os.environ.get('CHROMEDRIVER', '/usr/bin/chromedriver'))
CHAPTER = 'core.html'  # the page of nbs/00_core.ipynb
CHROME_ARGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
               '--disable-background-networking', '--disable-component-update', '--disable-sync',
               '--disable-dev-shm-usage', '--window-size=1280,1400']
MATH_ERRORS = '.MathJax_Error, merror, .mjx-merror, .noError'

@pytest.fixture(scope='module')
def book(tmp_path_factory):
    "The book, built by `tools/book.py --out TMP`."
    if not MATHJAX.exists(): pytest.skip(f'MathJax missing ({MATHJAX}): `make system` as root installs libjs-mathjax')
    out = tmp_path_factory.mktemp('book')
    res = subprocess.run([sys.executable, str(ROOT/'tools/book.py'), '--out', str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, f'tools/book.py failed:\n{res.stdout}\n{res.stderr}'
    return out

class _Refs(HTMLParser):
    "Resources (`script src`, `link href`, `img src`) and page links (`a href`) of an HTML page."
    def __init__(self):
        super().__init__()
        self.resources, self.links = [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ('script', 'img') and a.get('src'): self.resources.append(a['src'])
        if tag == 'link' and a.get('href'): self.resources.append(a['href'])
        if tag == 'a' and a.get('href'): self.links.append(a['href'])

def _refs(page):
    p = _Refs()
    p.feed(page.read_text(encoding='utf-8'))
    return p

def _builder():
    "tools/book.py as a module."
    sys.path.insert(0, str(ROOT/'tools'))
    try: import book as builder
    finally: sys.path.pop(0)
    return builder

def _chapter_notebooks(): return [p for p in _builder().chapters() if p.exists()]

def test_build(book):
    "One page per existing chapter, every resource local, every internal link resolving, no Quarto syntax left."
    pages = sorted(p.name for p in book.glob('*.html'))
    assert 'index.html' in pages and CHAPTER in pages, pages
    assert len(pages) == len(_chapter_notebooks())
    assert (book/'mathjax/MathJax.js').exists() and (book/'mathjax/config/TeX-AMS_CHTML-full.js').exists()
    size = sum(f.stat().st_size for f in (book/'mathjax').rglob('*') if f.is_file())
    assert size < 4e6, f'the MathJax copy should be the CommonHTML subset, not {size/1e6:.1f} MB'
    for page in book.glob('*.html'):
        refs = _refs(page)
        for src in refs.resources:
            if src.startswith('data:'): continue
            assert not urlsplit(src).scheme, f'{page.name} loads {src} from the network'
            assert (book/urlsplit(src).path).is_file(), f'{page.name}: {src} is missing'
        for href in refs.links:
            target = urlsplit(href)
            if target.scheme or not target.path: continue
            assert (book/target.path).is_file(), f'{page.name}: broken link {href}'
        # inline <code> in prose may name a directive on purpose ("the `#| slow` cell"); leaks show up elsewhere
        text = re.sub(r'<[^>]+>', ' ', re.sub(r'<(script|style|code)\b.*?</\1>', '', page.read_text(), flags=re.DOTALL))
        for junk in ('#| ', '{target=', '\n:::', 'output-file:'):
            assert junk not in text, f'{page.name} shows Quarto/nbdev syntax {junk!r}'

def test_figure_captions(book):
    "Each `#| fig-cap` of a chapter becomes a numbered caption under its figure."
    import nbformat
    from nbdev.doclinks import _nbpath2html  # nbdev's page name for a notebook, as the book uses
    for path in _chapter_notebooks():
        nb = nbformat.read(path, as_version=4)
        caps = [c for c in nb.cells if c.cell_type == 'code' and re.search(r'^#\|\s*fig-cap:', c.source, re.MULTILINE)]
        if not caps: continue
        html = (book/_nbpath2html(path.relative_to(ROOT/'nbs')).name).read_text()
        found = re.findall(r'<figcaption><p>Figure (\d+):', html)
        assert found == [str(i+1) for i in range(len(caps))], (path.name, found)

@pytest.fixture(scope='module')
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

@pytest.fixture(scope='module')
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
    assert [a.get_attribute('href').rsplit('/', 1)[-1] for a in browser.find_elements('css selector', '.book-sidebar li a')][:2] \
        == ['index.html', CHAPTER]
    n_math = _read(browser, base + CHAPTER, base)
    assert n_math >= 3, f'only {n_math} typeset formulas on {CHAPTER}'
    body = browser.find_element('tag name', 'body').text
    assert '\\lambda' not in body and '$' not in body, 'raw TeX left on the page'
    assert browser.find_element('css selector', '.book-header h1').text == 'Core checks'
    assert 'nothing clamped silently' in browser.find_element('css selector', '.book-header .subtitle').text
    assert browser.find_element('id', 'check_cov').text.startswith('check_cov')  # nbdev's show_doc, executed
    if via == 'file' and os.environ.get('BOOK_SCREENSHOT'):
        browser.find_element('id', 'check_cov').location_once_scrolled_into_view
        browser.execute_script('window.scrollBy(0, -500)')
        browser.save_screenshot(os.environ['BOOK_SCREENSHOT'])

def test_quarto_syntax():
    "What nbdev leaves for Quarto (cell options, pandoc markdown) is rendered, not shown as text."
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
    builder = _builder()
    png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=='
    nb = new_notebook(cells=[
        new_markdown_cell('## Moments {#sec-moments}\nSee @fig-one and [src](https://x.org/a.py){target="_blank" .src}.\n\n'
                          '::: {.callout-note}\nA *note*.\n:::'),
        new_code_cell('#| code-fold: show\n#| code-summary: "Exported source"\ndef f(x): return x'),
        new_code_cell('#| echo: false\n#| output: asis\nshow_doc(f)',
                      outputs=[new_output('execute_result', {'text/markdown': '[source](https://x.org/f.py){target="_blank"}\n\n### f'})]),
        new_code_cell('#| label: fig-one\n#| fig-cap: "A pixel, $x^2$."\nplt.imshow(x);',
                      outputs=[new_output('display_data', {'image/png': png})]),
        new_code_cell('#| include: false\nsecret = 1'),
        new_code_cell('#| output: false\nnoisy()', outputs=[new_output('stream', name='stdout', text='noise')])])
    refs = {}
    nb = builder.finish(builder.prepare(nb, 'p.html', {'title': 'T'}, refs), 'p.html', refs, 'https://doc/', ROOT)
    assert refs == {'fig-one': ('p.html', 'Figure 1')}
    book = dict(name='B', css='', nav=[('p.html', 'T')], page='p.html', title='T', subtitle='*sub*', prev=None, next=None)
    html, _ = builder.html_exporter().from_notebook_node(nb, resources={'book': book})
    body = html[html.index('<body'):]
    assert '<a id="sec-moments"></a>' in body and '{#' not in body
    assert '<a href="#fig-one">Figure 1</a>' in body and '@fig' not in body
    assert '<a class="src" href="https://x.org/a.py" target="_blank">src</a>' in body and '{target' not in body
    assert '<div class="callout-note">' in body and ':::' not in body
    assert '<details class="code-fold" open=""><summary>Exported source</summary>' in body and 'code-fold:' not in body
    assert 'show_doc' not in body and 'href="https://x.org/f.py" target="_blank">source</a>' in body
    assert re.search(r'<figure class="book-figure" id="fig-one">.*<img[^>]*src="data:image/png;base64,'
                     r'.*<figcaption><p>Figure 1: A pixel, \$x\^2\$.</p>', body, re.DOTALL)
    assert 'secret' not in body and 'noise' not in body and '>noisy<' in body
    assert '<div class="subtitle"><p><em>sub</em></p>' in body
