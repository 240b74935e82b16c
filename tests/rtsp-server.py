"""A GStreamer RTSP server streaming one PNG as H.264 over RTP at rtsp://127.0.0.1:PORT/cam.

Usage: rtsp-server.py PORT IMAGE.png   (prints "ready" once listening)
       rtsp-server.py --check          (exits 0 when every part it needs is installed)
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

# H.264, as IP cameras send it: a key frame every second, and the parameter sets with
# each one, so a client that connects late starts decoding within a second.
ELEMENTS = ["filesrc", "pngdec", "imagefreeze", "videorate", "videoconvert",
            "videoscale", "openh264enc", "h264parse", "rtph264pay"]
LAUNCH = ("( filesrc location={image} ! pngdec ! imagefreeze is-live=true ! videorate"
          " ! videoconvert ! videoscale"
          " ! video/x-raw,format=I420,width=320,height=240,framerate=5/1"
          " ! openh264enc gop-size=5 ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )")


def main():
    Gst.init(None)
    missing = [e for e in ELEMENTS if Gst.ElementFactory.find(e) is None]
    if missing:
        sys.exit("missing GStreamer elements: " + " ".join(missing))
    if sys.argv[1:] == ["--check"]:
        return
    port, image = sys.argv[1], sys.argv[2]
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH.format(image=image))
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit("could not listen on port " + port)
    print("ready", flush=True)
    GLib.MainLoop().run()


main()
