// An example worker written with SwiftNIO: serves HTTP on the socket swarmd
// passes as fd 3 (LISTEN_FDS=1), answering `/` with its pid. It needs no
// change for swarm: `[ready] mode = "listening"` sees NIO's epoll set
// watching fd 3. SIGTERM: stop accepting, finish, exit 0.
import Dispatch
import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix

final class Handler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case let .head(request) = unwrapInboundIn(data) else { return }
        let body: String
        switch request.uri {
        case "/health": body = "ok\n"
        default: body = "\(getpid())\n"
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain")
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "X-Worker", value: String(cString: getenv("SWARM_WORKER") ?? strdup("")))
        let head = HTTPResponseHead(version: request.version, status: .ok, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}

let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let bootstrap = ServerBootstrap(group: group)
    .childChannelInitializer { channel in
        channel.pipeline.configureHTTPServerPipeline().flatMap { channel.pipeline.addHandler(Handler()) }
    }

let listenFDs = getenv("LISTEN_FDS").flatMap { Int(String(cString: $0)) } ?? 0
let channel: Channel
if listenFDs >= 1 {
    channel = try bootstrap.withBoundSocket(3).wait()
} else {
    let port = getenv("PORT").flatMap { Int(String(cString: $0)) } ?? 8080
    channel = try bootstrap.bind(host: "127.0.0.1", port: port).wait()
}

signal(SIGTERM, SIG_IGN)
let term = DispatchSource.makeSignalSource(signal: SIGTERM)
term.setEventHandler { channel.close(promise: nil) }
term.resume()
try channel.closeFuture.wait()
try group.syncShutdownGracefully()
