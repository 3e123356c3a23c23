// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "swarm",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "swarmd", targets: ["swarmd"]),
        .executable(name: "swarmctl", targets: ["swarmctl"]),
        .executable(name: "swarm-example-nio", targets: ["ExampleNIOServer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        // SHA-256 of the config generations swarmd keeps (rollback).
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        // fork/exec and the few calls Swift cannot import (prctl, accept4, SO_PEERCRED, close_range).
        .target(name: "CSwarmSpawn"),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        // Pure: no Glibc, no clock, no I/O.
        .target(name: "SwarmCore"),
        .target(name: "SwarmProtocol"),
        .target(name: "SwarmConfig", dependencies: ["SwarmCore", .product(name: "TOMLKit", package: "TOMLKit")]),
        // The only modules that touch the kernel.
        .target(name: "SwarmSystem", dependencies: ["CSwarmSpawn"],
                swiftSettings: [.swiftLanguageMode(.v5)]),
        // libsystemd (sd-event, sd-daemon) for swarmd only: swarmctl links SwarmSystem, and loading
        // libsystemd and its six dependencies was a third of its start-up.
        .target(name: "SwarmSystemd", dependencies: ["SwarmSystem", "CSystemd"],
                swiftSettings: [.swiftLanguageMode(.v5)]),
        .target(name: "SwarmDaemon", dependencies: ["SwarmCore", "SwarmConfig", "SwarmProtocol", "SwarmSystem", "SwarmSystemd",
                                                  .product(name: "Logging", package: "swift-log"),
                                                  .product(name: "DequeModule", package: "swift-collections"),
                                                  .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: [.swiftLanguageMode(.v5)]),
        .executableTarget(name: "swarmd", dependencies: [
            "SwarmDaemon", "SwarmSystem", "SwarmSystemd", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: [.swiftLanguageMode(.v5)]),
        .executableTarget(name: "swarmctl", dependencies: [
            "SwarmProtocol", "SwarmSystem", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: [.swiftLanguageMode(.v5)]),
        // An example worker: a SwiftNIO HTTP server on the inherited fd 3.
        .executableTarget(name: "ExampleNIOServer", dependencies: [
            .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ], swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "SwarmCoreTests", dependencies: ["SwarmCore"]),
        .testTarget(name: "SwarmConfigTests", dependencies: ["SwarmConfig"]),
        .testTarget(name: "SwarmProtocolTests", dependencies: ["SwarmProtocol"]),
        .testTarget(name: "SwarmSystemTests", dependencies: ["SwarmSystem", "SwarmSystemd"], swiftSettings: [.swiftLanguageMode(.v5)]),
        // Real processes in real cgroups, real seccomp notifications (root only).
        .testTarget(name: "SwarmKernelTests", dependencies: ["SwarmSystem"],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        // The shell against a fake kernel: no process is started.
        .testTarget(name: "SwarmDaemonTests", dependencies: ["SwarmDaemon", "SwarmCore", "SwarmProtocol", "SwarmSystem", "SwarmSystemd"],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "IntegrationTests", dependencies: ["SwarmProtocol", "SwarmSystem"],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
    ]
)
