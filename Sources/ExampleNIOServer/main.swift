// An example worker written with SwiftNIO: serves HTTP on the socket swarmd
// passes as fd 3 (LISTEN_FDS=1), answering `/` with its pid. It needs no
// change for swarm: `[ready] mode = "listening"` sees NIO's epoll set
// watching fd 3.
//
// SIGTERM drains like the Node example: stop accepting; every response from then
// on carries "Connection: close" (a busy keep-alive client reconnects to another
// worker after its current request instead of having its connection cut between
// two requests); connections still open after IDLE_GRACE_MS (1000) are asked to
// quiesce (NIO closes the idle ones, the busy ones after their response); exit 0
// once the last connection is gone, at the latest after DRAIN_TIMEOUT_MS (9000,
// under swarmd's default [stop] timeout of 10 s).
// Without LISTEN_FDS it listens on 127.0.0.1:$PORT (8080) itself.
import Dispatch
import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix

final class Handler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let worker = getenv("SWARM_WORKER").map { String(cString: $0) } ?? ""
    private var keepAlive = true

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(request):
            keepAlive = request.isKeepAlive && !connections.draining
            let body = request.uri == "/health" ? "ok\n" : "\(getpid())\n"
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "text/plain")
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            headers.add(name: "X-Worker", value: worker)
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: .ok, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        case .body:
            break
        case .end:
            let close = !keepAlive
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if close { context.close(promise: nil) }
            }
        }
    }
}

/// The open connections, touched only on the one event loop.
final class Connections: @unchecked Sendable {
    private var open: [ObjectIdentifier: Channel] = [:]
    private(set) var draining = false
    private let loop: EventLoop
    private let drained: EventLoopPromise<Void>

    init(loop: EventLoop) {
        self.loop = loop
        drained = loop.makePromise()
    }

    var allClosed: EventLoopFuture<Void> { drained.futureResult }

    func add(_ channel: Channel) {
        loop.preconditionInEventLoop()
        if draining {
            channel.close(promise: nil)
            return
        }
        let id = ObjectIdentifier(channel)
        open[id] = channel
        channel.closeFuture.hop(to: loop).whenComplete { _ in
            self.open[id] = nil
            if self.draining && self.open.isEmpty { self.drained.succeed(()) }
        }
    }

    func drain(idleGrace: TimeAmount) {
        loop.preconditionInEventLoop()
        guard !draining else { return }
        draining = true
        if open.isEmpty { drained.succeed(()) }
        loop.scheduleTask(in: idleGrace) {
            for channel in self.open.values { channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        }
    }
}

let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let loop = group.next()
let connections = Connections(loop: loop)
let bootstrap = ServerBootstrap(group: group)
    .childChannelInitializer { channel in
        connections.add(channel)
        return channel.pipeline.configureHTTPServerPipeline().flatMap { channel.pipeline.addHandler(Handler()) }
    }

let listenFDs = getenv("LISTEN_FDS").flatMap { Int(String(cString: $0)) } ?? 0
let channel: Channel
if listenFDs >= 1 {
    channel = try bootstrap.withBoundSocket(3).wait()
} else {
    let port = getenv("PORT").flatMap { Int(String(cString: $0)) } ?? 8080
    channel = try bootstrap.bind(host: "127.0.0.1", port: port).wait()
}

func milliseconds(_ name: String, default value: Int64) -> TimeAmount {
    .milliseconds(getenv(name).flatMap { Int64(String(cString: $0)) } ?? value)
}
let idleGrace = milliseconds("IDLE_GRACE_MS", default: 1000)
let drainTimeout = milliseconds("DRAIN_TIMEOUT_MS", default: 9000)
signal(SIGTERM, SIG_IGN)
let term = DispatchSource.makeSignalSource(signal: SIGTERM)
term.setEventHandler {
    loop.execute {
        channel.close(promise: nil)
        connections.drain(idleGrace: idleGrace)
        loop.scheduleTask(in: drainTimeout) { exit(0) }
    }
}
term.resume()
try channel.closeFuture.wait()
try connections.allClosed.wait()
try group.syncShutdownGracefully()
