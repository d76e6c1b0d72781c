"""An RTSP camera that wants a password, for tests/camera_secrets.rs: GStreamer's RTSP server
(Debian's python3-gi and gir1.2-gst-rtsp-server-1.0, run with /usr/bin/python3) serving a
64x48 test pattern as RTP/JPEG at 5 frames per second on rtsp://127.0.0.1:<port>/live, Basic
authentication as user `cam` with the password in $RTSP_PASSWORD (not an argument: every user
can read a command line). Prints "ready" once it listens.

    RTSP_PASSWORD=... /usr/bin/python3 rtsp_server.py PORT
"""

import os
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = (
    "( videotestsrc is-live=true ! video/x-raw,format=I420,width=64,height=48,framerate=5/1"
    " ! jpegenc ! rtpjpegpay name=pay0 pt=26 )"
)


def main() -> None:
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(sys.argv[1])
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic("cam", os.environ["RTSP_PASSWORD"]), token)
    server.set_auth(auth)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role("viewer", "media.factory.access", True)
    permissions.add_permission_for_role("viewer", "media.factory.construct", True)
    factory.set_permissions(permissions)
    server.get_mount_points().add_factory("/live", factory)
    server.attach(None)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
