// Starts Azurite's blob service (installed under $1) with its periodic extent GC once a day
// instead of every ten minutes; every other argument is passed to Azurite unchanged.
//
// Why: Azurite 3.35's mark-and-sweep deletes each unreferenced extent with a LokiJS removal that
// rewrites the extents' binary index (linear in the extents it holds), all on its one event loop.
// Ten minutes into the test suites that is hundreds of thousands of extents, and Azurite stopped
// answering any request for over three minutes (CI runs of 2026-12-07 failed tests/gc_crash.rs
// on Azure that way: a GC run correctly gave up when it could not renew its lease). Nothing in
// layerstore's tests depends on the emulator reclaiming memory of deleted blobs; Azurite has no
// option for the interval, so it is set through its constants module before the server starts.
"use strict";
const path = require("path");
const root = path.join(process.argv[2], "node_modules", "azurite", "dist", "src", "blob");
const constants = require(path.join(root, "utils", "constants"));
constants.DEFAULT_GC_INTERVAL_MS = 24 * 60 * 60 * 1000; // setTimeout's limit is 2^31-1 ms (~24.8 days)
process.argv.splice(2, 1); // Azurite parses process.argv itself
require(path.join(root, "main"));
