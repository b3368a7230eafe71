"""Packaging for netmoments, read from `settings.ini` (nbdev 2.4.14 keeps its project settings there).

The sdist carries settings.ini, LICENSE, README.md and the bundled files (MANIFEST.in), so a wheel builds from it."""
from configparser import ConfigParser
from pathlib import Path
import setuptools

config = ConfigParser(delimiters=['='])
config.read(Path(__file__).parent / 'settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

licenses = {'apache2': 'Apache-2.0'}   # settings.ini's name -> SPDX expression (setuptools >= 77, which torch requires)
# Trove's development statuses, numbered from 1 as in `status = 3` ('3 - Alpha').
statuses = {int(s[0]): s for s in ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable',
                                   '6 - Mature', '7 - Inactive']}
py_versions = '3.10 3.11 3.12 3.13'.split()
min_python = cfg['min_python']
lic = licenses[cfg['license']]
requirements = cfg.get('requirements', '').split()
plot_requirements = cfg.get('plot_requirements', '').split()
run_requirements = cfg.get('run_requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
dev_requirements += [r for r in plot_requirements + run_requirements if r not in dev_requirements]   # dev gets everything
long_description = (Path(__file__).parent / 'README.md').read_text(encoding='utf-8')

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=long_description,
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license_expression=lic,
    license_files=['LICENSE'],
    keywords=cfg['keywords'].split(),
    url=cfg['git_url'],
    classifiers=[
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: Science/Research',
        'Natural Language :: English',
        'Topic :: Scientific/Engineering :: Mathematics',
    ] + ['Programming Language :: Python :: ' + v for v in py_versions[py_versions.index(min_python):]],
    packages=setuptools.find_packages(include=['netmoments', 'netmoments.*']),
    include_package_data=True,
    package_data={'netmoments': ['data/*.pt']},   # the bundled LeNet and MNIST slice, found relative to the package
    install_requires=requirements,
    extras_require={'plot': plot_requirements, 'run': run_requirements, 'dev': dev_requirements},
    python_requires='>=' + min_python,
    entry_points={
        'console_scripts': cfg.get('console_scripts', '').split(),
        'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
