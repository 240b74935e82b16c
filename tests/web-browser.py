#!/usr/bin/python3
"""Drives glimpse serve's web page in Debian's chromium over WebDriver (python3-selenium).

Usage: web-browser.py URL TOKEN PHOTO OUTDIR  (or --check: are chromium, chromedriver and
selenium here?). Prints `progress ...` lines while it runs (the test switches the camera's
scene on `progress espresso-seen`) and one JSON line of what it observed at the end; the
Rust test (runtime/tests/web.rs) judges it. Screenshots go to OUTDIR.
"""
import http.server
import json
import os
import sys
import threading
import time

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def check():
    """Exits non-zero unless selenium imports and chromium and its driver run."""
    import subprocess
    from selenium import webdriver  # noqa: F401  (the import is the check)
    for path in (CHROMIUM, CHROMEDRIVER):
        subprocess.run([path, "--version"], check=True, stdout=subprocess.DEVNULL, timeout=60)


def say(what):
    print("progress", what, flush=True)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def wait(driver, what, predicate, timeout=30):
    """Polls `predicate(driver)` until it returns something truthy; fails naming `what`."""
    end = time.monotonic() + timeout
    while True:
        try:
            value = predicate(driver)
        except Exception:  # an element replaced while read: look again
            value = None
        if value:
            return value
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def fetch_status(driver, path, method="GET"):
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {method: arguments[1]}).then(r => done(r.status), e => done(String(e)));",
        path, method)


def severe(driver):
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def hostile_site(target, body):
    """A page on another port of the same host (the same site, another origin) that
    POSTs to `target` with the browser's cookies, as a CSRF attack would."""
    page = f"""<!doctype html><title>hostile</title><script>
fetch({json.dumps(target)}, {{method: 'POST', credentials: 'include', mode: 'no-cors',
  headers: {{'Content-Type': 'text/plain'}}, body: {json.dumps(body)}}})
  .then(() => document.title = 'sent', e => document.title = 'failed ' + e);
</script>""".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def signed_out(d, url, out):
    """Without the token, and with a wrong one: the login form, no data, 401s."""
    d.get(url)
    wait(d, "the login form", lambda d: d.find_element("id", "login").is_displayed())
    out["app_hidden_without_token"] = not d.find_element("id", "app").is_displayed()
    out["model_card_without_token"] = d.find_element("id", "model-card").text
    out["status_without_token"] = {p: fetch_status(d, p) for p in
                                   ("/v1/model", "/v1/cameras", "/v1/collected",
                                    "/v1/cameras/default/stream.mjpeg")}
    d.find_element("id", "token").send_keys("not-the-token-at-all")
    d.find_element("css selector", "#login-form button").click()
    out["wrong_token_message"] = wait(
        d, "the wrong token's message", lambda d: d.find_element("id", "login-error").text)
    out["app_hidden_with_wrong_token"] = not d.find_element("id", "app").is_displayed()
    out["status_with_wrong_token"] = fetch_status(d, "/v1/model")
    severe(d)  # the 401s above are expected in the console: cleared here


def signed_in(d, token, photo, outdir, out):
    d.find_element("id", "token").send_keys(token)
    d.find_element("css selector", "#login-form button").click()
    wait(d, "the page after sign-in", lambda d: d.find_element("id", "app").is_displayed())
    wait(d, "the model card", lambda d: "sha256" in d.find_element("id", "model-card").text)
    out["model_card"] = d.find_element("id", "model-card").text
    out["live_width"] = wait(d, "a frame in the live view", lambda d: js(
        d, "const i = document.querySelector('.camera img'); return i && i.naturalWidth;"))
    states = [wait(d, "the state espresso", lambda d: js(
        d, "const s = document.querySelector('.camera .state');"
           "return s && s.dataset.state === 'espresso' && s.dataset.state;"))]
    out["overlay"] = d.find_element("css selector", ".camera .overlay").text
    say("espresso-seen")
    states.append(wait(d, "a state other than espresso", lambda d: js(
        d, "const s = document.querySelector('.camera .state');"
           "return s && s.dataset.state && s.dataset.state !== 'espresso' && s.dataset.state;"),
        timeout=60))
    out["states"] = states
    out["timeline"] = d.find_element("id", "timeline").text

    d.find_element("id", "photo").send_keys(photo)
    out["upload_top"] = wait(d, "the top-5 bars", lambda d: [
        e.text for e in d.find_elements("css selector", "#bars .label")])

    card = wait(d, "a collected frame", lambda d: d.find_elements("css selector", "#queue .frame"))[0]
    filed = {"id": card.get_attribute("data-id"),
             "label": card.find_element("css selector", "input").get_attribute("value")}
    card.find_element("css selector", "button[type=submit]").click()
    wait(d, "the filed frame to leave the queue", lambda d: not d.find_elements(
        "css selector", f'#queue .frame[data-id="{filed["id"]}"]'))
    out["filed"] = filed
    js(d, "window.scrollTo(0, 0);")
    d.save_screenshot(os.path.join(outdir, "desktop.png"))

    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": 360, "height": 740, "deviceScaleFactor": 2, "mobile": True})
    time.sleep(1)
    out["phone"] = js(d, "return {scroll: document.documentElement.scrollWidth,"
                         " client: document.documentElement.clientWidth,"
                         " widest: Math.max(...[...document.querySelectorAll('body *')]"
                         ".map(e => e.getBoundingClientRect().right))};")
    d.save_screenshot(os.path.join(outdir, "phone.png"))
    d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    out["console_errors"] = severe(d)


def cross_origin(d, url, out):
    """A hostile page on another port POSTs with this browser's session cookie."""
    left = wait(d, "a frame still waiting", lambda d: [
        e.get_attribute("data-id") for e in d.find_elements("css selector", "#queue .frame")])
    target = left[0]
    server = hostile_site(f"{url}/v1/collected/{target}/discard", "{}")
    d.get(f"http://127.0.0.1:{server.server_address[1]}/")
    wait(d, "the hostile page's request", lambda d: d.title != "hostile" and d.title)
    out["hostile"] = {"target": target, "title": d.title}
    server.shutdown()
    severe(d)


def main():
    if sys.argv[1:] == ["--check"]:
        check()
        return
    url, token, photo, outdir = sys.argv[1:5]
    out = {}
    d = browser()
    try:
        signed_out(d, url, out)
        signed_in(d, token, photo, outdir, out)
        cross_origin(d, url, out)
    finally:
        d.quit()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
