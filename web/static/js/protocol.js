// @ts-check
/**
 * The browser side of the Practice Hub signaling protocol (hub/PROTOCOL.md).
 *
 * No DOM access here: this module owns the signaling websocket, the two peer
 * connections (publisher: we offer; subscriber: the hub offers), candidate
 * trickle, renegotiation, ping/pong liveness and reconnection with backoff.
 * The pages (console.js, station.js) drive it and render what it reports.
 */

/** @typedef {'camera' | 'microphone' | 'screen'} Source */
/** @typedef {'thumbnail' | 'stage' | 'paused'} QualityLevel  how to send the camera (`quality`) */
/** @typedef {'on' | 'paused'} MicrophoneLevel  how to send the microphone (`quality`) */
/** @typedef {'low' | 'mid' | 'high' | 'auto'} VideoCap  our cap on simulcast layers (`video_cap`) */
/** @typedef {'VP8' | 'H264'} VideoCodec  what our video is sent in */
/** @typedef {'new' | 'connecting' | 'joined' | 'reconnecting' | 'closed'} ClientState */

/**
 * @typedef {object} PublicationInfo
 * @property {string} publication
 * @property {Source} source
 * @property {'audio' | 'video'} kind
 * @property {string} [codec]
 * @property {boolean} muted
 * @property {boolean} [stalled] on stage, it was flowing, and nothing reaches the hub
 */

/**
 * @typedef {object} ParticipantInfo
 * @property {string} sid
 * @property {string} identity
 * @property {string} name
 * @property {string} role
 * @property {boolean} hand_raised
 * @property {boolean} on_stage
 * @property {boolean} can_moderate
 * @property {boolean} [can_chat]   absent from a hub before chat was a grant
 * @property {PublicationInfo[]} publications
 */

/**
 * What one m-line of the subscriber connection carries (`tracks` of an `offer` or of
 * a `tracks` message: the hub re-points m-lines without renegotiating).
 * @typedef {object} TrackInfo
 * @property {string} publication
 * @property {string} participant
 * @property {Source} source
 */

/**
 * A track received on the subscriber connection, with what it carries.
 * @typedef {object} RemoteTrack
 * @property {string} mid
 * @property {MediaStreamTrack} track
 * @property {RTCRtpReceiver} receiver
 * @property {TrackInfo} info
 */

/**
 * @typedef {object} LinkStats
 * @property {number | null} rttMs      round trip, from ICE (else from ping/pong)
 * @property {number | null} loss       fraction of inbound packets lost since the last sample
 * @property {number | null} inKbps
 * @property {number | null} outKbps
 * @property {'good' | 'fair' | 'poor' | 'down'} level
 */

/**
 * @typedef {object} HubError
 * @property {string} code
 * @property {string} message
 * @property {string} [ref]
 */

/**
 * Events the client emits, with their detail.
 * @typedef {object} HubEvents
 * @property {ClientState} state
 * @property {ParticipantInfo} joined          our own participant, after every (re)join
 * @property {Map<string, ParticipantInfo>} participants  the room changed (join, leave, update)
 * @property {string[]} stage
 * @property {RemoteTrack[]} tracks            the set of received tracks changed
 * @property {{from: string, name: string, text: string, at: number}} chat
 * @property {{source: Source, muted: boolean, by_moderator: boolean}} muted
 * @property {QualityLevel} quality          how to send the camera changed (`microphone` too, then)
 * @property {string[]} speakers
 * @property {Record<string, {rtt_ms?: number, loss?: number, bitrate_kbps?: number, uplink?: QualityLevel}>} stats
 *     `uplink`: how the site was told to send its camera (`paused`: on no console's page)
 * @property {string} removed                  reason; the client will not reconnect
 * @property {HubError} error                  an `error` message from the hub, or a local failure
 * @property {HubError} fatal                  the client gave up (bad token...)
 * @property {MediaStatus} media               recording / live HLS / restream changed (and on join)
 * @property {{identity: string, name: string}[]} removed_identities  kept out by a moderator (moderators only)
 * @property {{id: string, deadline: number}} rollcall   the center calls the roll
 * @property {RollCallStatus} rollcall_status  answers so far (moderators only)
 */

/**
 * The room's recording, live HLS and restreams (the `media` message). Everyone gets
 * whether it records and is live; only moderators get the rest.
 * @typedef {object} MediaStatus
 * @property {boolean} recording
 * @property {number | null} [recording_started_at]
 * @property {boolean} live
 * @property {string | null} hls_url
 * @property {{target_id: string, url: string, state: string, error: string | null}[]} [restreams]
 *     moderators only; each URL with its stream key hidden
 * @property {Record<string, string>} [errors]   moderators only: the last failure of recording / live / restream
 */

/**
 * @typedef {object} RollCallStatus
 * @property {string} id
 * @property {number} deadline
 * @property {boolean} closed
 * @property {Record<string, {status: 'waiting' | 'present' | 'late' | 'absent', at: number | null}>} entries
 * @property {Record<string, number>} counts
 * @property {Record<string, string>} [names]  display names of the identities, absent sites included
 */

/** @type {Set<unknown>} the `level`s of a `quality` message */
const QUALITY_LEVELS = new Set(["stage", "thumbnail", "paused"]);

/** Error codes after which reconnecting with the same token cannot help. */
const FATAL_CODES = new Set(["invalid_token", "token_expired", "wrong_room", "removed"]);

/** Camera encodings per quality level (see `quality` in PROTOCOL.md). */
export const CAMERA_CAPTURE = { width: 1280, height: 720, frameRate: 30 };
export const THUMBNAIL = { width: 320, maxFramerate: 15, maxBitrate: 250_000 };
export const STAGE = { maxFramerate: 30, maxBitrate: 1_500_000 };

/**
 * The encoding parameters for a camera track at a quality level.
 * @param {QualityLevel} level
 * @param {number | undefined} captureWidth
 * @returns {RTCRtpEncodingParameters}
 */
export function cameraEncoding(level, captureWidth) {
    if (level === "stage") {
        return {
            active: true,
            scaleResolutionDownBy: 1,
            maxFramerate: STAGE.maxFramerate,
            maxBitrate: STAGE.maxBitrate,
        };
    }
    const width = captureWidth || CAMERA_CAPTURE.width;
    return {
        // Paused: nobody receives it; the camera stays open and resumes at once.
        active: level !== "paused",
        scaleResolutionDownBy: Math.max(1, width / THUMBNAIL.width),
        maxFramerate: THUMBNAIL.maxFramerate,
        maxBitrate: THUMBNAIL.maxBitrate,
    };
}

/**
 * The console's camera in three layers (simulcast), lowest first as the hub reads
 * them: each station receives the one its link and its view take (PROTOCOL.md,
 * "Layers"). `width` is the layer's width from a 1280-wide capture.
 */
export const CAMERA_LAYERS = [
    { rid: "l", width: 320, maxBitrate: 150_000 },
    { rid: "m", width: 640, maxBitrate: 500_000 },
    { rid: "h", width: 1280, maxBitrate: 1_500_000 },
];

/**
 * The console's screen share in two layers, lowest first: a station whose link cannot
 * carry the slides at full size reads them at a third of it, a few times a second,
 * rather than not at all (the hub picks per station, as for the camera).
 * @type {RTCRtpEncodingParameters[]}
 */
export const SCREEN_LAYERS = [
    { rid: "l", scaleResolutionDownBy: 3, maxBitrate: 250_000, maxFramerate: 5 },
    { rid: "h", scaleResolutionDownBy: 1, maxBitrate: STAGE.maxBitrate, maxFramerate: 15 },
];

/**
 * The encodings of a simulcast camera at a quality level: every layer on stage,
 * the lowest alone as a thumbnail, none while paused.
 * @param {QualityLevel} level
 * @param {number | undefined} captureWidth
 * @returns {RTCRtpEncodingParameters[]}
 */
export function cameraLayers(level, captureWidth) {
    const width = captureWidth || CAMERA_CAPTURE.width;
    return CAMERA_LAYERS.map((layer, index) => ({
        rid: layer.rid,
        active: level === "stage" || (level === "thumbnail" && index === 0),
        scaleResolutionDownBy: Math.max(1, width / layer.width),
        maxFramerate: STAGE.maxFramerate,
        maxBitrate: layer.maxBitrate,
    }));
}

/**
 * Puts `codec`'s variants first in what a sending transceiver offers (the hub answers
 * with the first it takes): a PC whose hardware encodes H.264 may send it instead of
 * VP8, simulcast included. Left as it is where the browser cannot send `codec`.
 * @param {RTCRtpTransceiver} transceiver
 * @param {VideoCodec} codec
 */
function preferCodec(transceiver, codec) {
    const capabilities = RTCRtpSender.getCapabilities("video");
    if (!capabilities || !transceiver.setCodecPreferences) return;
    const mime = `video/${codec}`.toLowerCase();
    const first = capabilities.codecs.filter((c) => c.mimeType.toLowerCase() === mime);
    if (first.length === 0) return;
    transceiver.setCodecPreferences([...first, ...capabilities.codecs.filter((c) => !first.includes(c))]);
}

/**
 * Reconnection delay for the n-th consecutive attempt (0-based), in ms:
 * 250, 500, 1000, 2000, then 3000 at most, with ±20 % jitter so that 190
 * stations do not all come back in the same instant. Kept short so that a
 * station is back within 10 s of the hub.
 * @param {number} attempt
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, random = Math.random) {
    const base = Math.min(3000, 250 * 2 ** attempt);
    return Math.round(base * (0.8 + 0.4 * random()));
}

/**
 * The signaling websocket URL for a page served by the hub; naming the room lets any
 * node of a cluster send the client to the node holding it.
 * @param {string} [room]
 */
export function defaultSignalingUrl(room) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = room ? `?room=${encodeURIComponent(room)}` : "";
    return `${scheme}//${location.host}/ws${query}`;
}

/**
 * The room a join token is for (its claims are readable; only the hub checks them).
 * @param {string} token
 * @returns {string}
 */
export function roomOfToken(token) {
    try {
        const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
        const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
        const claims = JSON.parse(new TextDecoder().decode(bytes));
        return typeof claims.room === "string" ? claims.room : "";
    } catch {
        return "";
    }
}

/** Redirects followed in a row before giving up (a cluster moving a room twice). */
const MAX_REDIRECTS = 3;

/**
 * @param {RTCPeerConnection} pc
 * @param {number} timeoutMs
 * @returns {Promise<void>}
 */
function iceGatheringDone(pc, timeoutMs) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
        const done = () => {
            clearTimeout(timer);
            pc.removeEventListener("icegatheringstatechange", check);
            resolve();
        };
        const check = () => {
            if (pc.iceGatheringState === "complete") done();
        };
        const timer = setTimeout(done, timeoutMs);
        pc.addEventListener("icegatheringstatechange", check);
    });
}

/**
 * Per peer connection bookkeeping for candidate trickle.
 * @typedef {object} PcSlot
 * @property {RTCPeerConnection} pc
 * @property {boolean} described  our SDP has been sent: later candidates are trickled
 */

export class HubClient {
    /**
     * @param {object} options
     * @param {string} options.token              the join token
     * @param {string} [options.url]              signaling URL (default: /ws on this page's host)
     * @param {(attempt: number) => number} [options.backoff]
     * @param {number} [options.pingIntervalMs]
     * @param {number} [options.silenceTimeoutMs]
     * @param {number} [options.stallTimeoutMs]  a peer connection "disconnected" this long is rebuilt
     * @param {number} [options.iceRestartAfterMs]  ICE "disconnected" this long restarts ICE first
     * @param {boolean} [options.simulcast]     send the camera in three layers (the console)
     * @param {VideoCodec} [options.videoCodec]  the codec our video is sent in (the browser's
     *                                          first choice by default, VP8 in Chromium)
     */
    constructor(options) {
        this.token = options.token;
        this.simulcast = !!options.simulcast;
        this.videoCodec = options.videoCodec;
        this.url = options.url || defaultSignalingUrl(roomOfToken(options.token));
        /** @type {string | null} where a `redirect` sends the next connection (once) */
        this._redirectTo = null;
        this._redirects = 0;
        /** the current connection is one a `redirect` sent us to */
        this._redirected = false;
        this.backoff = options.backoff || ((n) => backoffDelay(n));
        this.pingIntervalMs = options.pingIntervalMs || 5000;
        this.silenceTimeoutMs = options.silenceTimeoutMs || 15000;
        this.stallTimeoutMs = options.stallTimeoutMs || 8000;
        this.iceRestartAfterMs = options.iceRestartAfterMs || 2000;

        /** @type {ClientState} */
        this.state = "new";
        /** @type {WebSocket | null} */
        this.ws = null;
        /** @type {RTCPeerConnection | null} */
        this.publisher = null;
        /** @type {RTCPeerConnection | null} */
        this.subscriber = null;
        /** @type {ParticipantInfo | null} */
        this.self = null;
        /** @type {string} */
        this.room = "";
        /** @type {Map<string, ParticipantInfo>} */
        this.participants = new Map();
        /** @type {string[]} */
        this.stage = [];
        /** @type {string[]} */
        this.speakers = [];
        /** @type {QualityLevel} */
        this.quality = "thumbnail";
        /** @type {MicrophoneLevel} */
        this.microphone = "on";
        /** @type {{tiles: string[], listen: string[]} | null} what this console shows (`setView`) */
        this.view = null;
        /** @type {RTCIceServer[]} */
        this.iceServers = [];
        /** Audio-only mode (kept across reconnects): the hub sends us no video. */
        this.audioOnly = false;
        /** @type {VideoCap} our cap on simulcast layers (kept across reconnects) */
        this.videoCap = "auto";
        /** @type {Map<string, RemoteTrack>} received tracks by subscriber mid */
        this.remoteTracks = new Map();
        /** @type {Map<Source, MediaStreamTrack>} what we publish (kept across reconnects) */
        this.localTracks = new Map();
        /** @type {Map<Source, RTCRtpTransceiver>} publisher transceivers by source */
        this.transceivers = new Map();
        /** @type {Map<Source, boolean>} the user's own mute choice */
        this.selfMuted = new Map();
        /** @type {Set<Source>} sources a moderator muted (the user cannot unmute them) */
        this.moderatorMuted = new Set();
        /** @type {number | null} last ping round trip in ms */
        this.pingRttMs = null;
        /** number of successful joins after the first */
        this.rejoins = 0;

        /** @type {Map<string, Set<(detail: any) => void>>} */
        this._handlers = new Map();
        this._generation = 0;
        this._attempt = 0;
        this._pingId = 0;
        /** @type {Map<number, number>} */
        this._pingSent = new Map();
        this._lastHeard = 0;
        /** @type {ReturnType<typeof setInterval> | null} */
        this._pingTimer = null;
        /** Holds what the subscriber connection receives as long as resends need. */
        this.playoutDelay = new PlayoutDelay(() => this.pingRttMs);
        /** @type {ReturnType<typeof setInterval> | null} */
        this._playoutTimer = null;
        /** @type {ReturnType<typeof setTimeout> | null} */
        this._retryTimer = null;
        /** @type {ReturnType<typeof setTimeout> | null} */
        this._joinTimer = null;
        /** @type {Map<string, PcSlot>} */
        this._slots = new Map();
        /** @type {Promise<void>} serializes subscriber offers */
        this._subscriberQueue = Promise.resolve();
        this._negotiating = false;
        this._negotiateAgain = false;
        /** @type {{resolve: (sdp: string) => void, reject: (e: Error) => void} | null} */
        this._pendingAnswer = null;
        /** @type {{resolve: () => void, reject: (e: Error) => void} | null} */
        this._firstJoin = null;
        /** @type {Map<string, {bytes: number, packets: number, lost: number, sent: number, at: number}>} */
        this._lastSample = new Map();
    }

    // ---- events -------------------------------------------------------------

    /**
     * @template {keyof HubEvents} K
     * @param {K} type
     * @param {(detail: HubEvents[K]) => void} handler
     */
    on(type, handler) {
        let set = this._handlers.get(type);
        if (!set) this._handlers.set(type, (set = new Set()));
        set.add(handler);
        return () => set.delete(handler);
    }

    /**
     * @template {keyof HubEvents} K
     * @param {K} type
     * @param {HubEvents[K]} detail
     */
    _emit(type, detail) {
        const set = this._handlers.get(type);
        if (!set) return;
        for (const handler of [...set]) {
            try {
                handler(detail);
            } catch (e) {
                console.error(`practice-hub: ${type} handler failed`, e);
            }
        }
    }

    /** @param {ClientState} state */
    _setState(state) {
        if (this.state === state) return;
        this.state = state;
        this._emit("state", state);
    }

    // ---- lifecycle ------------------------------------------------------------

    /**
     * Connects and joins; resolves after the first `joined`, rejects if the hub
     * refuses the token. After that the client reconnects by itself.
     * @returns {Promise<void>}
     */
    start() {
        if (this.state !== "new") return Promise.resolve();
        return new Promise((resolve, reject) => {
            this._firstJoin = { resolve, reject };
            this._connect();
        });
    }

    /** Leaves the room for good. */
    leave() {
        if (this.state === "closed") return;
        this._send({ type: "leave" });
        this._shutdown();
    }

    /** Stops everything without reconnecting. */
    _shutdown() {
        this._generation++;
        this._setState("closed");
        this._clearTimers();
        const ws = this.ws;
        this.ws = null;
        if (ws) {
            ws.onclose = null;
            ws.onmessage = null;
            ws.close();
        }
        this._closePeerConnections();
    }

    _clearTimers() {
        if (this._pingTimer) clearInterval(this._pingTimer);
        if (this._playoutTimer) clearInterval(this._playoutTimer);
        if (this._retryTimer) clearTimeout(this._retryTimer);
        if (this._joinTimer) clearTimeout(this._joinTimer);
        this._pingTimer = this._playoutTimer = this._retryTimer = this._joinTimer = null;
    }

    _connect() {
        const generation = ++this._generation;
        this._setState(this.rejoins > 0 || this._attempt > 0 ? "reconnecting" : "connecting");
        /** @type {WebSocket} */
        let ws;
        const url = this._redirectTo || this.url;
        if (!this._redirectTo) this._redirects = 0; // a fresh start from the home URL
        this._redirected = !!this._redirectTo;
        this._redirectTo = null;
        try {
            ws = new WebSocket(url);
        } catch (e) {
            this._connectionLost(generation, String(e));
            return;
        }
        this.ws = ws;
        ws.onopen = () => {
            if (generation !== this._generation) return;
            this._lastHeard = Date.now();
            ws.send(JSON.stringify({ type: "join", token: this.token }));
        };
        ws.onmessage = (event) => {
            if (generation !== this._generation) return;
            this._lastHeard = Date.now();
            /** @type {any} */
            let msg;
            try {
                msg = JSON.parse(String(event.data));
            } catch {
                return;
            }
            if (!msg || typeof msg.type !== "string") return;
            this._handle(msg, generation).catch((e) => {
                this._emit("error", { code: "client", message: String(e), ref: msg.type });
            });
        };
        ws.onclose = () => {
            this._connectionLost(generation, "socket closed");
        };
        this._joinTimer = setTimeout(() => {
            if (generation === this._generation && this.state !== "joined") {
                this._connectionLost(generation, "join timed out");
            }
        }, 10000);
    }

    /**
     * The websocket died (or a peer connection failed): drop everything of this
     * join and try again after a backoff delay, with the same token.
     * @param {number} generation
     * @param {string} why
     * @param {boolean} [immediately]  no backoff (a redirect to the room's node)
     */
    _connectionLost(generation, why, immediately = false) {
        if (generation !== this._generation || this.state === "closed") return;
        this._generation++;
        this._clearTimers();
        const ws = this.ws;
        this.ws = null;
        if (ws) {
            ws.onclose = null;
            ws.onmessage = null;
            try {
                ws.close();
            } catch {
                /* already closed */
            }
        }
        this._closePeerConnections();
        this._setState("reconnecting");
        // A node we were sent to that fails is likely one that just died: its rooms move
        // to a live node within seconds, so ask again soon instead of backing off far.
        if (this._redirected) this._attempt = Math.min(this._attempt, 1);
        const delay = immediately ? 0 : this.backoff(this._attempt++);
        console.info(`practice-hub: connection lost (${why}); retrying in ${delay} ms`);
        this._retryTimer = setTimeout(() => this._connect(), delay);
    }

    _closePeerConnections() {
        if (this._pendingAnswer) {
            this._pendingAnswer.reject(new Error("connection closed"));
            this._pendingAnswer = null;
        }
        for (const slot of this._slots.values()) {
            slot.pc.onicecandidate = null;
            slot.pc.onconnectionstatechange = null;
            slot.pc.oniceconnectionstatechange = null;
            slot.pc.close();
        }
        this._slots.clear();
        this.publisher = null;
        this.subscriber = null;
        this.transceivers.clear();
        this._negotiating = false;
        this._negotiateAgain = false;
        this._subscriberQueue = Promise.resolve();
        this._lastSample.clear();
        if (this.remoteTracks.size) {
            this.remoteTracks.clear();
            this._emit("tracks", []);
        }
    }

    /** @param {object} msg */
    _send(msg) {
        const ws = this.ws;
        if (!ws || ws.readyState !== WebSocket.OPEN) return false;
        ws.send(JSON.stringify(msg));
        return true;
    }

    _startPing() {
        const generation = this._generation;
        this._pingTimer = setInterval(() => {
            if (generation !== this._generation) return;
            if (Date.now() - this._lastHeard > this.silenceTimeoutMs) {
                this._connectionLost(generation, "no message for too long");
                return;
            }
            const id = ++this._pingId;
            this._pingSent.set(id, performance.now());
            if (this._pingSent.size > 8) {
                const oldest = this._pingSent.keys().next().value;
                if (oldest !== undefined) this._pingSent.delete(oldest);
            }
            this._send({ type: "ping", id });
        }, this.pingIntervalMs);
        this._playoutTimer = setInterval(() => {
            if (generation === this._generation && this.subscriber) this.playoutDelay.update(this.subscriber);
        }, PLAYOUT_CHECK_MS);
    }

    // ---- incoming messages ------------------------------------------------------

    /**
     * @param {any} msg
     * @param {number} generation
     */
    async _handle(msg, generation) {
        switch (msg.type) {
            case "joined":
                await this._onJoined(msg, generation);
                break;
            case "redirect": {
                const url = String(msg.url || "");
                if (/^wss?:\/\//.test(url) && this._redirects < MAX_REDIRECTS) {
                    this._redirects++;
                    this._redirectTo = url;
                    this._connectionLost(generation, `room held by node ${msg.node}`, true);
                } else {
                    this._connectionLost(generation, "redirect refused");
                }
                break;
            }
            case "answer":
                if (msg.pc === "publisher" && this._pendingAnswer) {
                    const pending = this._pendingAnswer;
                    this._pendingAnswer = null;
                    pending.resolve(String(msg.sdp));
                }
                break;
            case "offer":
                if (msg.pc === "subscriber") {
                    const run = () =>
                        this._onSubscriberOffer(msg, generation).catch((e) => {
                            // The hub waits for an answer before it offers again:
                            // without one we would receive nothing new. Start over.
                            this._emit("error", { code: "client", message: String(e), ref: "offer" });
                            this._connectionLost(generation, "could not answer the hub's offer");
                        });
                    this._subscriberQueue = this._subscriberQueue.then(run, run);
                    await this._subscriberQueue;
                }
                break;
            case "candidate": {
                const slot = this._slots.get(msg.pc);
                if (!slot) break;
                const c = msg.candidate;
                try {
                    if (!c || !c.candidate) await slot.pc.addIceCandidate();
                    else await slot.pc.addIceCandidate(c);
                } catch (e) {
                    console.warn("practice-hub: addIceCandidate failed", e);
                }
                break;
            }
            case "participant_joined":
            case "participant_updated": {
                /** @type {ParticipantInfo} */
                const p = msg.participant;
                if (!p || typeof p.sid !== "string") break;
                if (this.self && p.sid === this.self.sid) {
                    this.self = p;
                } else {
                    this.participants.set(p.sid, p);
                }
                this._emit("participants", this.participants);
                break;
            }
            case "participant_left":
                this.participants.delete(msg.sid);
                this._emit("participants", this.participants);
                break;
            case "stage":
                this.stage = Array.isArray(msg.stage) ? msg.stage : [];
                this._emit("stage", this.stage);
                break;
            case "chat":
                this._emit("chat", {
                    from: String(msg.from || ""),
                    name: String(msg.name || ""),
                    text: String(msg.text || ""),
                    at: Number(msg.at) || Date.now() / 1000,
                });
                break;
            case "quality":
                if (QUALITY_LEVELS.has(msg.level)) {
                    this.quality = msg.level;
                    this.microphone = msg.microphone === "paused" ? "paused" : "on";
                    await this.applyQuality();
                    this._emit("quality", this.quality);
                }
                break;
            case "tracks": {
                // After any offer still being answered: a map never overtakes one.
                const run = () => {
                    const slot = this._slots.get("subscriber");
                    if (slot && generation === this._generation) this._setRemoteTracks(slot.pc, msg.tracks);
                };
                this._subscriberQueue = this._subscriberQueue.then(run, run);
                await this._subscriberQueue;
                break;
            }
            case "muted":
                this._onMuted(msg.source, !!msg.muted, !!msg.by_moderator);
                break;
            case "removed":
                this._shutdown();
                this._emit("removed", String(msg.reason || ""));
                break;
            case "pong": {
                const sent = this._pingSent.get(msg.id);
                if (sent !== undefined) {
                    this.pingRttMs = performance.now() - sent;
                    this._pingSent.delete(msg.id);
                }
                break;
            }
            case "speakers":
                this.speakers = Array.isArray(msg.speakers) ? msg.speakers : [];
                this._emit("speakers", this.speakers);
                break;
            case "stats":
                this._emit("stats", msg.participants || {});
                break;
            case "media":
                this._emit("media", /** @type {MediaStatus} */ (msg));
                break;
            case "removed_identities":
                this._emit("removed_identities", Array.isArray(msg.removed) ? msg.removed : []);
                break;
            case "rollcall":
                this._emit("rollcall", { id: String(msg.id), deadline: Number(msg.deadline) });
                break;
            case "rollcall_status":
                this._emit("rollcall_status", /** @type {RollCallStatus} */ (msg));
                break;
            case "error":
                this._onError(msg, generation);
                break;
            default:
                break;
        }
    }

    /**
     * @param {any} msg
     * @param {number} generation
     */
    _onError(msg, generation) {
        /** @type {HubError} */
        const err = { code: String(msg.code), message: String(msg.message || ""), ref: msg.ref };
        if (msg.ref === "offer" && this._pendingAnswer) {
            const pending = this._pendingAnswer;
            this._pendingAnswer = null;
            pending.reject(new Error(`${err.code}: ${err.message}`));
        }
        if (msg.ref === "mute" && err.code === "muted_by_moderator" && msg.source) {
            // our unmute was refused: show it muted and locked.
            this._onMuted(msg.source, true, true);
        }
        if ((msg.ref === "join" || this.state !== "joined") && FATAL_CODES.has(err.code)) {
            this._shutdown();
            if (this._firstJoin) {
                this._firstJoin.reject(new Error(`${err.code}: ${err.message}`));
                this._firstJoin = null;
            }
            this._emit("fatal", err);
            return;
        }
        if (generation === this._generation) this._emit("error", err);
    }

    /**
     * @param {any} msg
     * @param {number} generation
     */
    async _onJoined(msg, generation) {
        if (this._joinTimer) clearTimeout(this._joinTimer);
        this._joinTimer = null;
        const wasJoined = this.self !== null;
        const handWasRaised = !!(this.self && this.self.hand_raised);
        this.room = String(msg.room || "");
        this.self = msg.participant;
        this.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
        this.participants = new Map();
        for (const p of msg.participants || []) {
            if (p && p.sid !== this.self?.sid) this.participants.set(p.sid, p);
        }
        this.stage = Array.isArray(msg.stage) ? msg.stage : [];
        this.quality = QUALITY_LEVELS.has(msg.quality) ? msg.quality : "thumbnail";
        this.microphone = msg.microphone === "paused" ? "paused" : "on";
        // A moderator's mute is kept across a rejoin: the hub starts the new join
        // with fresh publications, so the client honours the lock itself and mutes
        // at the hub as its own choice until a moderator releases it.
        if (wasJoined) this.rejoins++;
        this._attempt = 0;
        this._setState("joined");
        if (this.view) this._send({ type: "view", ...this.view });
        this._startPing();

        this.subscriber = this._newPeerConnection("subscriber", generation);
        this.publisher = this._newPeerConnection("publisher", generation);

        if (this.self) this._emit("joined", this.self);
        if (msg.media) this._emit("media", /** @type {MediaStatus} */ (msg.media));
        this._emit("participants", this.participants);
        this._emit("stage", this.stage);
        this._emit("quality", this.quality);
        if (this._firstJoin) {
            this._firstJoin.resolve();
            this._firstJoin = null;
        }
        // Republish whatever we were publishing before the drop.
        if (this.localTracks.size) {
            for (const [source, track] of this.localTracks) this._addTransceiver(source, track);
            await this._negotiate();
            for (const source of this.localTracks.keys()) {
                if (this.isMuted(source)) this._send({ type: "mute", source, muted: true });
            }
        }
        // A raised hand survives a network drop too, and so does audio-only mode.
        if (handWasRaised && this.self && !this.self.hand_raised) this.raiseHand(true);
        if (this.audioOnly) this.setAudioOnly(true);
        if (this.videoCap !== "auto") this.setVideoCap(this.videoCap);
    }

    /**
     * @param {'publisher' | 'subscriber'} name
     * @param {number} generation
     */
    _newPeerConnection(name, generation) {
        const pc = new RTCPeerConnection({ iceServers: this.iceServers });
        /** @type {PcSlot} */
        const slot = { pc, described: false };
        this._slots.set(name, slot);
        pc.onicecandidate = (event) => {
            if (generation !== this._generation || !slot.described) return;
            const candidate = event.candidate ? event.candidate.toJSON() : null;
            this._send({ type: "candidate", pc: name, candidate });
        };
        // A path that breaks (a link that flaps, a phone leaving Wi-Fi) is first
        // mended by an ICE restart, which keeps the connection and its media; if ICE
        // is not back within stallTimeoutMs, the whole join starts over.
        /** @type {ReturnType<typeof setTimeout> | null} */
        let restart = null;
        /** @type {ReturnType<typeof setTimeout> | null} */
        let stalled = null;
        const connected = () => pc.iceConnectionState === "connected" || pc.iceConnectionState === "completed";
        const watch = () => {
            if (generation !== this._generation) return;
            const ice = pc.iceConnectionState;
            if (pc.connectionState === "failed" && ice !== "failed") {
                this._connectionLost(generation, `${name} connection failed`); // DTLS, not the path
            } else if (connected()) {
                if (restart) clearTimeout(restart);
                if (stalled) clearTimeout(stalled);
                restart = stalled = null;
            } else if (ice === "disconnected" || ice === "failed") {
                if (!restart) {
                    const after = ice === "failed" ? 0 : this.iceRestartAfterMs;
                    restart = setTimeout(() => {
                        if (generation === this._generation && !connected()) this._restartIce(name);
                    }, after);
                }
                if (!stalled) {
                    stalled = setTimeout(() => {
                        if (generation === this._generation && !connected()) {
                            this._connectionLost(generation, `${name} connection stalled`);
                        }
                    }, this.stallTimeoutMs);
                }
            }
        };
        pc.oniceconnectionstatechange = watch;
        pc.onconnectionstatechange = watch;
        return pc;
    }

    /**
     * Restarts ICE on both connections: new credentials and connectivity checks on the
     * current network path, keeping the connections, their encryption and media.
     */
    restartIce() {
        this._restartIce("publisher");
        this._restartIce("subscriber");
    }

    /**
     * The publisher offers new ICE credentials; the subscriber asks the hub to (it
     * offers there).
     * @param {'publisher' | 'subscriber'} name
     */
    _restartIce(name) {
        const slot = this._slots.get(name);
        if (!slot || !slot.described || this.state !== "joined") return;
        console.info(`practice-hub: ${name} connection: restarting ICE`);
        if (name === "subscriber") {
            this._send({ type: "restart_ice" });
            return;
        }
        slot.pc.restartIce();
        this._negotiate().catch((e) => console.warn(`practice-hub: ICE restart offer failed: ${e}`));
    }

    /**
     * @param {any} msg
     * @param {number} generation
     */
    async _onSubscriberOffer(msg, generation) {
        const slot = this._slots.get("subscriber");
        if (!slot || generation !== this._generation) return;
        const pc = slot.pc;
        await pc.setRemoteDescription({ type: "offer", sdp: String(msg.sdp) });
        const answer = await pc.createAnswer();
        await pc.setLocalDescription(answer);
        if (!slot.described) await iceGatheringDone(pc, 1000);
        if (generation !== this._generation || !pc.localDescription) return;
        this._send({ type: "answer", pc: "subscriber", sdp: pc.localDescription.sdp });
        slot.described = true;

        this._setRemoteTracks(pc, msg.tracks);
    }

    /**
     * What each m-line of the subscriber connection carries now (an `offer`'s or a
     * `tracks` message's map); emits `tracks`.
     * @param {RTCPeerConnection} pc
     * @param {unknown} map
     */
    _setRemoteTracks(pc, map) {
        /** @type {Record<string, TrackInfo>} */
        const tracks = map && typeof map === "object" ? /** @type {Record<string, TrackInfo>} */ (map) : {};
        this.remoteTracks.clear();
        for (const transceiver of pc.getTransceivers()) {
            const mid = transceiver.mid;
            if (mid === null || !(mid in tracks)) continue;
            this.remoteTracks.set(mid, {
                mid,
                track: transceiver.receiver.track,
                receiver: transceiver.receiver,
                info: tracks[mid],
            });
        }
        this._emit("tracks", [...this.remoteTracks.values()]);
    }

    // ---- publishing ---------------------------------------------------------------

    /**
     * @param {Source} source
     * @param {MediaStreamTrack} track
     */
    _addTransceiver(source, track) {
        const pc = this.publisher;
        if (!pc) return;
        const stream = new MediaStream([track]);
        /** @type {RTCRtpEncodingParameters[] | undefined} */
        let sendEncodings;
        if (source === "camera") {
            const width = track.getSettings().width;
            sendEncodings = this.simulcast
                ? cameraLayers(this.quality, width)
                : [cameraEncoding(this.quality, width)];
        } else if (source === "screen") {
            sendEncodings = this.simulcast
                ? SCREEN_LAYERS.map((layer) => ({ ...layer }))
                : [{ maxBitrate: STAGE.maxBitrate, maxFramerate: 15 }];
        }
        let transceiver = this.transceivers.get(source);
        if (transceiver) {
            transceiver.direction = "sendonly";
            transceiver.sender.replaceTrack(track);
            return;
        }
        transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: [stream], sendEncodings });
        if (track.kind === "video" && this.videoCodec) preferCodec(transceiver, this.videoCodec);
        this.transceivers.set(source, transceiver);
    }

    /**
     * Publishes a track as `source` (replacing the current one without
     * renegotiation if that source is already published).
     * @param {Source} source
     * @param {MediaStreamTrack} track
     */
    async publish(source, track) {
        if (source === "screen" && "contentHint" in track) track.contentHint = "detail";
        const had = this.localTracks.get(source);
        this.localTracks.set(source, track);
        const muted = this.isMuted(source);
        track.enabled = !muted;
        const transceiver = this.transceivers.get(source);
        if (had && transceiver && transceiver.direction === "sendonly") {
            await transceiver.sender.replaceTrack(track);
            if (source === "camera") await this.applyQuality();
            return;
        }
        if (this.state !== "joined" || !this.publisher) return; // published on (re)join
        this._addTransceiver(source, track);
        await this._negotiate();
        if (muted) this._send({ type: "mute", source, muted: true });
    }

    /**
     * Stops publishing `source`: its m-line goes inactive in a new offer.
     * The track itself is left to the caller.
     * @param {Source} source
     */
    async unpublish(source) {
        if (!this.localTracks.delete(source)) return;
        const transceiver = this.transceivers.get(source);
        if (!transceiver || !this.publisher) return;
        transceiver.direction = "inactive";
        await transceiver.sender.replaceTrack(null);
        await this._negotiate();
    }

    /** Offers the publisher connection's current state; one offer at a time. */
    async _negotiate() {
        if (this._negotiating) {
            this._negotiateAgain = true;
            return;
        }
        this._negotiating = true;
        const generation = this._generation;
        try {
            do {
                this._negotiateAgain = false;
                const slot = this._slots.get("publisher");
                if (!slot || generation !== this._generation) return;
                const pc = slot.pc;
                await pc.setLocalDescription(await pc.createOffer());
                if (!slot.described) await iceGatheringDone(pc, 1000);
                if (generation !== this._generation || !pc.localDescription) return;
                /** @type {Record<string, Source>} */
                const sources = {};
                for (const [source, t] of this.transceivers) {
                    if (t.mid !== null && t.direction === "sendonly" && t.sender.track) {
                        sources[t.mid] = source;
                    }
                }
                const answered = new Promise((resolve, reject) => {
                    this._pendingAnswer = { resolve, reject };
                });
                const sent = this._send({
                    type: "offer",
                    pc: "publisher",
                    sdp: pc.localDescription.sdp,
                    sources,
                });
                slot.described = true;
                if (!sent) return;
                /** @type {string} */
                let sdp;
                try {
                    sdp = await withTimeout(answered, 15000, "no answer from the hub");
                } catch (e) {
                    this._pendingAnswer = null;
                    if (generation !== this._generation) return;
                    if (pc.signalingState === "have-local-offer") {
                        await pc.setLocalDescription({ type: "rollback" });
                    }
                    this._emit("error", { code: "negotiation", message: String(e), ref: "offer" });
                    if (String(e).includes("no answer")) this._connectionLost(generation, "no answer");
                    return;
                }
                if (generation !== this._generation) return;
                await pc.setRemoteDescription({ type: "answer", sdp });
                await this.applyQuality();
            } while (this._negotiateAgain);
        } finally {
            if (generation === this._generation) this._negotiating = false;
        }
    }

    /** Applies the current quality level to the camera sender and the microphone's
     * (no renegotiation). */
    async applyQuality() {
        await this._applyMicrophone();
        const transceiver = this.transceivers.get("camera");
        const track = this.localTracks.get("camera");
        if (!transceiver || !track || transceiver.direction !== "sendonly") return;
        const sender = transceiver.sender;
        const params = sender.getParameters();
        if (!params.encodings || params.encodings.length === 0) return;
        const width = track.getSettings().width;
        if (params.encodings.length > 1) {
            // The layers keep their rids (fixed at negotiation); the rest follows the level.
            const layers = cameraLayers(this.quality, width);
            params.encodings.forEach((encoding, i) => Object.assign(encoding, layers[i], { rid: encoding.rid }));
        } else {
            Object.assign(params.encodings[0], cameraEncoding(this.quality, width));
        }
        // A thumbnail keeps its size and gives up frames when the link is short;
        // on stage the browser may lower the size to keep the frame rate. Changing
        // the preference also clears the browser's earlier size reductions, so a
        // thumbnail sent back from the stage is ~320x180 again, not 1/4 of
        // whatever the stage encoding had been reduced to.
        /** @type {any} */ (params).degradationPreference =
            this.quality === "stage" ? "maintain-framerate" : "maintain-resolution";
        try {
            await sender.setParameters(params);
        } catch (e) {
            console.warn("practice-hub: setParameters failed", e);
        }
    }

    /** Sends the microphone, or not while nobody hears it (`microphone: "paused"`). */
    async _applyMicrophone() {
        const transceiver = this.transceivers.get("microphone");
        if (!transceiver || transceiver.direction !== "sendonly") return;
        const params = transceiver.sender.getParameters();
        if (!params.encodings || params.encodings.length === 0) return;
        const active = this.microphone !== "paused";
        if (params.encodings[0].active === active) return;
        params.encodings[0].active = active;
        try {
            await transceiver.sender.setParameters(params);
        } catch (e) {
            console.warn("practice-hub: setParameters failed", e);
        }
    }

    // ---- mute -----------------------------------------------------------------------

    /** @param {Source} source */
    isMuted(source) {
        return this.moderatorMuted.has(source) || !!this.selfMuted.get(source);
    }

    /** @param {Source} source */
    isLocked(source) {
        return this.moderatorMuted.has(source);
    }

    /**
     * Mutes or unmutes one of our publications. Unmuting is refused locally
     * while a moderator holds the mute.
     * @param {Source} source
     * @param {boolean} muted
     * @returns {boolean} whether the change was made
     */
    setMuted(source, muted) {
        if (!muted && this.moderatorMuted.has(source)) return false;
        this.selfMuted.set(source, muted);
        const track = this.localTracks.get(source);
        if (track) track.enabled = !this.isMuted(source);
        if (track) this._send({ type: "mute", source, muted });
        this._emit("muted", { source, muted: this.isMuted(source), by_moderator: false });
        return true;
    }

    /**
     * @param {Source} source
     * @param {boolean} muted
     * @param {boolean} byModerator
     */
    _onMuted(source, muted, byModerator) {
        if (muted && byModerator) this.moderatorMuted.add(source);
        if (!muted) this.moderatorMuted.delete(source);
        if (!muted && byModerator) {
            // The moderator released the mute: back to the user's own choice,
            // which the hub must hear again if it was "muted".
            if (this.selfMuted.get(source)) this._send({ type: "mute", source, muted: true });
        } else if (!byModerator) {
            this.selfMuted.set(source, muted);
        }
        const track = this.localTracks.get(source);
        if (track) track.enabled = !this.isMuted(source);
        this._emit("muted", { source, muted: this.isMuted(source), by_moderator: byModerator });
    }

    // ---- room actions -----------------------------------------------------------------

    /**
     * Audio-only mode for a weak link: while on, the hub sends us no video at all.
     * @param {boolean} on
     */
    setAudioOnly(on) {
        this.audioOnly = on;
        return this._send({ type: "audio_only", on });
    }

    /**
     * Caps the layers of simulcast video the hub sends us (流畅 / 标清 / 高清 / 自动).
     * @param {VideoCap} cap
     */
    setVideoCap(cap) {
        this.videoCap = cap;
        return this._send({ type: "video_cap", cap });
    }

    /** @param {boolean} raised */
    raiseHand(raised) {
        return this._send({ type: "hand", raised });
    }

    /** Whether our grant lets us chat (the hub refuses it otherwise). */
    get canChat() {
        return this.self?.can_chat !== false;
    }

    /** @param {string} text */
    sendChat(text) {
        const trimmed = text.trim().slice(0, 2000);
        if (!trimmed || !this.canChat) return false;
        return this._send({ type: "chat", text: trimmed });
    }

    /**
     * @param {string} sid
     * @param {Source} source
     * @param {boolean} muted
     */
    moderateMute(sid, source, muted) {
        return this._send({ type: "moderate", action: "mute", participant: sid, source, muted });
    }

    /**
     * @param {string} sid
     * @param {boolean} onStage
     */
    moderateStage(sid, onStage) {
        return this._send({ type: "moderate", action: "stage", participant: sid, on_stage: onStage });
    }

    /** @param {string} sid */
    lowerHand(sid) {
        return this._send({ type: "moderate", action: "hand", participant: sid, raised: false });
    }

    /**
     * Removes a participant: its identity stays out of the room (any link of it)
     * until {@link readmit}.
     * @param {string} sid
     */
    remove(sid) {
        return this._send({ type: "moderate", action: "remove", participant: sid });
    }

    /** Lets a removed identity join again. @param {string} identity */
    readmit(identity) {
        return this._send({ type: "moderate", action: "readmit", identity });
    }

    /**
     * Call the roll (moderators): every site in the room, plus `expected`.
     * @param {number} seconds
     * @param {string[]} [expected]
     */
    startRollcall(seconds, expected = []) {
        return this._send({ type: "rollcall", action: "start", seconds, expected });
    }

    stopRollcall() {
        return this._send({ type: "rollcall", action: "stop" });
    }

    /**
     * Tells the hub what this console shows (moderators): the sids of the tiles on
     * screen and of the sites listened to. The hub forwards their video and voices,
     * nothing else off stage; sent again after a rejoin.
     * @param {string[]} tiles
     * @param {string[]} [listen]
     */
    setView(tiles, listen = []) {
        this.view = { tiles: [...tiles], listen: [...listen] };
        return this._send({ type: "view", ...this.view });
    }

    /** @param {string} id */
    answerRollcall(id) {
        return this._send({ type: "rollcall_ack", id });
    }

    // ---- link quality -------------------------------------------------------------------

    /**
     * Our own link as the browser sees it: round trip from the selected ICE pair
     * (or ping/pong), inbound loss and bitrates since the previous call.
     * @returns {Promise<LinkStats>}
     */
    async linkStats() {
        if (this.state !== "joined") {
            return { rttMs: null, loss: null, inKbps: null, outKbps: null, level: "down" };
        }
        /** @type {number | null} */
        let rtt = null;
        let packets = 0;
        let lost = 0;
        let bytesIn = 0;
        let bytesOut = 0;
        for (const [name, slot] of this._slots) {
            /** @type {RTCStatsReport} */
            let report;
            try {
                report = await slot.pc.getStats();
            } catch {
                continue;
            }
            for (const s of report.values()) {
                if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
                    rtt = Math.max(rtt ?? 0, s.currentRoundTripTime * 1000);
                }
                if (s.type === "inbound-rtp" && name === "subscriber") {
                    packets += s.packetsReceived || 0;
                    lost += Math.max(0, s.packetsLost || 0);
                    bytesIn += s.bytesReceived || 0;
                }
                if (s.type === "outbound-rtp" && name === "publisher") {
                    bytesOut += s.bytesSent || 0;
                }
            }
        }
        const now = performance.now();
        const prev = this._lastSample.get("link");
        this._lastSample.set("link", { bytes: bytesIn, packets, lost, sent: bytesOut, at: now });
        /** @type {number | null} */
        let loss = null;
        /** @type {number | null} */
        let inKbps = null;
        /** @type {number | null} */
        let outKbps = null;
        if (prev && now > prev.at) {
            const secs = (now - prev.at) / 1000;
            const dp = packets - prev.packets + (lost - prev.lost);
            loss = dp > 0 ? Math.max(0, lost - prev.lost) / dp : 0;
            inKbps = ((bytesIn - prev.bytes) * 8) / 1000 / secs;
            outKbps = ((bytesOut - prev.sent) * 8) / 1000 / secs;
        }
        const rttMs = rtt ?? this.pingRttMs;
        return { rttMs, loss, inKbps, outKbps, level: qualityLevel(rttMs, loss) };
    }
}

/**
 * Classifies a link from its round trip (ms) and loss fraction.
 * @param {number | null} rttMs
 * @param {number | null} loss
 * @returns {'good' | 'fair' | 'poor'}
 */
export function qualityLevel(rttMs, loss) {
    const r = rttMs ?? 0;
    const l = loss ?? 0;
    if (r > 400 || l > 0.08) return "poor";
    if (r > 150 || l > 0.02) return "fair";
    return "good";
}

// ---- playout delay for resends ------------------------------------------------------

/** How often a receiving connection's need for resends is sampled (ms). */
const PLAYOUT_CHECK_MS = 2000;
/** Resends asked for per video packet received over which a link needs repairs. */
export const REPAIR_NACK_RATIO = 0.02;
/** The longest hold a receiver is given (ms); beyond, the picture would lag too far. */
export const REPAIR_DELAY_MAX_MS = 1500;
/** How long a link must go without repairs before its hold is let go (ms). */
export const REPAIR_QUIET_MS = 30_000;

/**
 * How long received media should wait before it plays (ms), so that a lost packet's
 * resend arrives in time: one round trip after the loss shows, two if the resend is
 * lost too (the hub resends again no sooner than a round trip later), plus 100 ms for
 * the frame that reveals the loss. `null` leaves it to the browser. Only while the
 * link needs repairs (`nackRatio`, NACKs sent per video packet received, at or over
 * `REPAIR_NACK_RATIO`): a clean link keeps the browser's low delay.
 * @param {number | null} rttMs
 * @param {number | null} nackRatio
 * @returns {number | null}
 */
export function repairDelayMs(rttMs, nackRatio) {
    if (rttMs === null || nackRatio === null || nackRatio < REPAIR_NACK_RATIO) return null;
    return Math.min(REPAIR_DELAY_MAX_MS, Math.round(2 * rttMs + 100));
}

/**
 * Holds a receiving connection's media as long as its resends need (`repairDelayMs`),
 * through each receiver's `jitterBufferTarget`, audio with video so they stay in step.
 * A browser that only receives learns no round trip from RTCP, and its jitter buffer
 * did not wait for resends over a long link: at 10 % loss and 300 ms, a station
 * decoded 12 of 20 frames/s with 13 freezes in 20 s, and 18 with 2-3 held (issue 15).
 * The hold rises at once and is let go after `REPAIR_QUIET_MS` without repairs.
 */
export class PlayoutDelay {
    /** @param {() => number | null} [fallbackRttMs] a round trip when ICE has none yet */
    constructor(fallbackRttMs = () => null) {
        this.fallbackRttMs = fallbackRttMs;
        /** @type {number | null} the hold now given (ms), null: the browser's own */
        this.targetMs = null;
        this._repairedAt = 0;
        /** @type {{nacks: number, packets: number} | null} */
        this._last = null;
    }

    /**
     * Samples `pc` and sets its receivers' hold; called every few seconds.
     * @param {RTCPeerConnection} pc
     */
    async update(pc) {
        /** @type {RTCStatsReport} */
        let report;
        try {
            report = await pc.getStats();
        } catch {
            return; // closed meanwhile
        }
        /** @type {number | null} */
        let rttMs = null;
        let nacks = 0;
        let packets = 0;
        for (const s of report.values()) {
            if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
                rttMs = s.currentRoundTripTime * 1000;
            }
            if (s.type === "inbound-rtp" && s.kind === "video") {
                nacks += s.nackCount || 0;
                packets += s.packetsReceived || 0;
            }
        }
        const last = this._last;
        this._last = { nacks, packets };
        if (!last || packets < last.packets) return; // first sample, or a new connection
        const received = packets - last.packets;
        const ratio = received > 0 ? (nacks - last.nacks) / received : null;
        const wanted = repairDelayMs(rttMs ?? this.fallbackRttMs(), ratio);
        const now = performance.now();
        /** @type {number | null} */
        let target = this.targetMs;
        if (wanted !== null) {
            this._repairedAt = now;
            target = Math.max(target ?? 0, wanted);
        } else if (target !== null && now - this._repairedAt > REPAIR_QUIET_MS) {
            target = null;
        }
        this.targetMs = target;
        for (const receiver of pc.getReceivers()) {
            if (receiver.jitterBufferTarget !== target) receiver.jitterBufferTarget = target;
        }
    }
}

/**
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {string} message
 * @returns {Promise<T>}
 */
function withTimeout(promise, ms, message) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(message)), ms);
        promise.then(
            (v) => {
                clearTimeout(timer);
                resolve(v);
            },
            (e) => {
                clearTimeout(timer);
                reject(e);
            },
        );
    });
}

// ---- WHEP (household viewers) ---------------------------------------------------------

/**
 * A WHEP session: a recvonly offer POSTed to /whep/{room}: one video m-line
 * (the hub sends the stage's picture: the lecturer, or a shared screen, or the
 * site last called on stage) and `audioSlots` audio m-lines (the hub fills them
 * with the stage's microphones, so a household hears the lecturer *and* a
 * station called on stage). No DOM: the page plays `stream`'s tracks.
 */
export class WhepSession {
    /**
     * @param {string} endpoint  e.g. "/whep/lecture-1"
     * @param {{token?: string, iceServers?: RTCIceServer[], audioSlots?: number}} [options]
     */
    constructor(endpoint, options = {}) {
        this.endpoint = endpoint;
        this.token = options.token;
        this.audioSlots = options.audioSlots ?? 3;
        this.iceServers = options.iceServers || [];
        /** @type {RTCPeerConnection | null} */
        this.pc = null;
        /** @type {string | null} */
        this.resource = null;
        this.stream = new MediaStream();
        /** @type {((state: RTCPeerConnectionState) => void) | null} */
        this.onstatechange = null;
        /** @type {(() => void) | null} called when a track is added to `stream` */
        this.ontrack = null;
        /** Holds what it receives as long as resends need. */
        this.playoutDelay = new PlayoutDelay();
        /** @type {ReturnType<typeof setInterval> | null} */
        this._playoutTimer = null;
    }

    /**
     * Offers, waits for the answer; throws with the HTTP status on refusal.
     * @returns {Promise<void>}
     */
    async start() {
        const pc = new RTCPeerConnection({ iceServers: this.iceServers });
        this.pc = pc;
        pc.addTransceiver("video", { direction: "recvonly" });
        for (let i = 0; i < Math.max(1, this.audioSlots); i++) pc.addTransceiver("audio", { direction: "recvonly" });
        pc.ontrack = (event) => {
            this.stream.addTrack(event.track);
            if (this.ontrack) this.ontrack();
        };
        pc.onconnectionstatechange = () => {
            if (this.onstatechange) this.onstatechange(pc.connectionState);
        };
        await pc.setLocalDescription(await pc.createOffer());
        await iceGatheringDone(pc, 1000);
        /** @type {Record<string, string>} */
        const headers = { "Content-Type": "application/sdp" };
        if (this.token) headers.Authorization = `Bearer ${this.token}`;
        const response = await fetch(this.endpoint, {
            method: "POST",
            headers,
            body: pc.localDescription ? pc.localDescription.sdp : "",
        });
        if (response.status !== 201) {
            pc.close();
            this.pc = null;
            const retryAfter = Number(response.headers.get("Retry-After")) || 0;
            throw new WhepError(response.status, await response.text().catch(() => ""), retryAfter);
        }
        const location = response.headers.get("Location");
        this.resource = location ? new URL(location, new URL(this.endpoint, globalThis.location.href)).href : null;
        await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
        this._playoutTimer = setInterval(() => this.playoutDelay.update(pc), PLAYOUT_CHECK_MS);
    }

    /**
     * Caps the layers of simulcast video the hub sends this session (`video_cap`).
     * @param {VideoCap} cap
     * @returns {Promise<boolean>} whether the hub took it
     */
    async setVideoCap(cap) {
        if (!this.resource) return false;
        /** @type {Record<string, string>} */
        const headers = { "Content-Type": "application/json" };
        if (this.token) headers.Authorization = `Bearer ${this.token}`;
        const response = await fetch(this.resource, {
            method: "PATCH",
            headers,
            body: JSON.stringify({ video_cap: cap }),
        });
        return response.status === 204;
    }

    /**
     * Ends the session (DELETE on the resource, with the token it was opened
     * with: the hub lets only that identity end it); safe to call twice.
     */
    async stop() {
        const pc = this.pc;
        this.pc = null;
        if (pc) pc.close();
        if (this._playoutTimer) clearInterval(this._playoutTimer);
        this._playoutTimer = null;
        for (const track of this.stream.getTracks()) this.stream.removeTrack(track);
        const resource = this.resource;
        this.resource = null;
        if (resource) {
            try {
                /** @type {Record<string, string>} */
                const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
                await fetch(resource, { method: "DELETE", headers, keepalive: true });
            } catch {
                /* the hub will time it out */
            }
        }
    }
}

export class WhepError extends Error {
    /**
     * @param {number} status
     * @param {string} body
     * @param {number} [retryAfter]  seconds the hub asked to wait (429, 503), else 0
     */
    constructor(status, body, retryAfter = 0) {
        super(`WHEP ${status}: ${body.slice(0, 200)}`);
        this.status = status;
        this.retryAfter = retryAfter;
    }
}

/**
 * What `GET /api/rooms/{room}` says about a room. `public`: households may
 * watch without an account (WHEP); `hls_url`: live HLS for households.
 * `recording` and `media` only for a moderator of the room (its token sent).
 * Unknown fields stay undefined.
 * @typedef {object} RoomStatus
 * @property {boolean} [public]
 * @property {string | null} [hls_url]
 * @property {boolean} [recording]
 * @property {MediaStatus} [media]
 */

/**
 * @param {string} room
 * @param {string} [token]  a moderator's join token: the whole room instead of the household view
 * @returns {Promise<RoomStatus | null>} null when the hub does not expose it (yet)
 */
export async function fetchRoomStatus(room, token) {
    /** @type {Record<string, string>} */
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    try {
        const response = await fetch(`/api/rooms/${encodeURIComponent(room)}`, { headers });
        if (!response.ok) return null;
        const body = await response.json();
        return body && typeof body === "object" ? body : null;
    } catch {
        return null;
    }
}

/**
 * Opens or closes a room to anonymous household viewers
 * (`PATCH /api/rooms/{room}` with a moderator's token).
 * @param {string} room
 * @param {string} token
 * @param {boolean} isPublic
 * @returns {Promise<RoomStatus>}
 */
export async function setRoomPublic(room, token, isPublic) {
    const response = await fetch(`/api/rooms/${encodeURIComponent(room)}`, {
        method: "PATCH",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
        body: JSON.stringify({ public: isPublic }),
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}: ${(await response.text()).slice(0, 200)}`);
    return response.json();
}

/**
 * Start or stop a room's recording or its live HLS for households (moderators).
 * @param {string} room
 * @param {string} token
 * @param {'recording' | 'live'} what
 * @param {boolean} on
 * @returns {Promise<MediaStatus>}
 */
export async function setRoomMedia(room, token, what, on) {
    const response = await fetch(`/api/rooms/${encodeURIComponent(room)}/${what}`, {
        method: on ? "POST" : "DELETE",
        headers: { Authorization: `Bearer ${token}` },
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}: ${(await response.text()).slice(0, 200)}`);
    return response.json();
}

/**
 * Push the room's stage to an RTMP server, or stop one push (moderators).
 * @param {string} room
 * @param {string} token
 * @param {{url: string} | {stop: string}} what
 * @returns {Promise<MediaStatus>}
 */
export async function setRestream(room, token, what) {
    const base = `/api/rooms/${encodeURIComponent(room)}/restreams`;
    const response = await fetch("url" in what ? base : `${base}/${encodeURIComponent(what.stop)}`, {
        method: "url" in what ? "POST" : "DELETE",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
        body: "url" in what ? JSON.stringify({ url: what.url }) : undefined,
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}: ${(await response.text()).slice(0, 200)}`);
    return response.json();
}
