"""``tunelab ui``: a local web app to start, watch, stop, resume, queue and compare runs, and read their reports.

Why a small FastAPI app with plain HTML, CSS and JavaScript rather than Gradio (or Streamlit): the page must work with
the network unplugged. Gradio pages load fonts and scripts from CDNs and hang or render blank offline, and they
keep the run inside the server process. Here every file the browser loads ships in this package (static/: no CDN,
no web font, no external script; curves are inline SVG drawn by our own few lines of JavaScript), FastAPI and uvicorn
are already tunelab's for ``tunelab serve``, and the page only polls JSON endpoints, so any browser works.

The app owns no state a run needs: each run is a ``tunelab train`` process writing its run folder, and the app reads
the output folder back (folder.py), so closing the browser or restarting the app loses nothing. jobs.py starts and
stops the processes, queue.py keeps the queue on disk, form.py builds the form from the recipe schema,
comparisons.py drives ``tunelab compare``, workbench.py ties them together and app.py is the HTTP surface
(``create_app(Workbench(folder))``), served by the same uvicorn plumbing as ``tunelab serve``.
"""
