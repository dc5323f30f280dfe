// @ts-check
/**
 * All user-visible strings, one dictionary per language. Simplified Chinese
 * is the default; the choice is remembered in localStorage.
 */

const STORAGE_KEY = "practiceHub.lang";

/** @typedef {'zh' | 'en'} Lang */

const zh = {
    "app.title": "新时代文明实践中心",
    "lang.toggle": "English",
    "lang.toggle.label": "切换语言为英文",
    "landing.title": "文明实践互动平台",
    "landing.intro": "中心直播宣讲、召开调度会；各所、各站在线参与；群众在家收看直播。",
    "landing.library": "数字资源库",
    "landing.setup.title": "首次使用：创建管理员",
    "landing.setup.text": "本平台还没有管理员。请在运行本平台的电脑上执行下面的命令（按提示输入至少 10 位的密码），然后刷新本页登录：",
    "landing.setup.after": "登录后可一键载入本县站点树、创建各所各站的账号、安排活动。",
    "landing.live": "正在直播",
    "landing.live.none": "现在没有直播。",
    "landing.upcoming": "即将开始",
    "landing.upcoming.none": "近期没有安排直播。",
    "landing.libraryLink": "观看往期回放：数字资源库",
    "landing.watchNow": "观看",
    "landing.staff": "工作人员登录",
    "landing.username": "用户名",
    "landing.password": "密码",
    "landing.login": "登录",
    "landing.loginFailed": "登录失败：{reason}",
    "landing.toAdmin": "{user}，进入管理后台",
    "landing.toSessions": "{user}，进入站点活动",
    "landing.station": "已有入会链接？打开站点客户端",
    "onair.recording": "● 正在录制",
    "onair.live": "直播中",
    "removed.readmit": "允许重新加入",
    "console.removed": "已移出",
    "console.end": "结束活动",
    "console.end.confirm": "确定结束本次活动？录制将停止并送入资源库，各站点将离开会议。",
    "console.ended": "活动已结束。",
    "state.new": "未连接",
    "state.connecting": "正在连接…",
    "state.joined": "已连接",
    "state.reconnecting": "连接中断，正在自动重连…",
    "state.closed": "已断开",
    "token.title": "加入会议",
    "token.prompt": "请打开下发的站点链接，或粘贴入会令牌：",
    "token.label": "入会令牌",
    "token.join": "加入",
    "error.token": "令牌无效或已过期，请联系中心重新下发链接。",
    "error.media": "无法打开摄像头或麦克风：",
    "error.insecure": "浏览器只在 HTTPS 或本机地址下开放摄像头和麦克风，请使用 https:// 地址打开。",
    "removed.removed_by_moderator": "您已被主持人移出会议。",
    "removed.duplicate_identity": "该站点已在其他设备或窗口加入，本窗口已断开。",
    "removed.room_closed": "会议已结束。",
    "removed.other": "您已离开会议。",
    "console.title": "中心控制台",
    "console.golive": "开始直播",
    "console.stoplive": "停止直播",
    "console.share": "共享屏幕",
    "console.unshare": "停止共享",
    "console.camera": "摄像头",
    "console.microphone": "麦克风",
    "console.codec": "视频编码",
    "console.preview": "本地预览",
    "console.wall": "站点画面",
    "console.wall.empty": "暂无站点接入",
    "wall.show": "显示",
    "wall.show.online": "在线站点",
    "wall.show.hand": "举手",
    "wall.show.weak": "弱网",
    "wall.show.offline": "离线",
    "wall.pageSize": "每页",
    "wall.prev": "上一页",
    "wall.next": "下一页",
    "wall.page": "第 {n}/{of} 页",
    "wall.institute.all": "全部所",
    "wall.noCamera": "未开摄像头",
    "badge.offline": "离线",
    "badge.listening": "监听中",
    "action.listen": "监听",
    "station.paused": "未被观看，已暂停上传画面",
    "station.micPaused": "中心未在收听本站声音；举手发言即可被听到",
    "console.hands": "举手队列",
    "console.hands.empty": "暂无举手",
    "console.record.start": "开始录制",
    "console.record.stop": "停止录制",
    "console.media.recording": "录制出错",
    "console.media.live": "群众直播出错",
    "console.media.restream": "转推出错",
    "restream.title": "转推直播",
    "restream.url": "推流地址（rtmp://）",
    "restream.add": "开始转推",
    "restream.stop": "停止",
    "restream.connecting": "连接中",
    "restream.live": "推流中",
    "restream.retrying": "重试中",
    "restream.failed": "失败",
    "restream.stopped": "已停止",
    "rollcall.title": "点名",
    "rollcall.seconds": "应答时限（秒）",
    "rollcall.start": "开始点名",
    "rollcall.stop": "结束点名",
    "rollcall.present": "已到",
    "rollcall.late": "迟到",
    "rollcall.absent": "未到",
    "rollcall.waiting": "等待应答",
    "rollcall.prompt": "中心正在点名，请应答",
    "rollcall.answer": "到",
    "rollcall.answered": "已应答",
    "console.recording": "录制",
    "console.householdLive": "群众直播",
    "console.status.unknown": "未知",
    "console.openHouseholds": "向群众开放直播",
    "console.closeHouseholds": "停止群众直播",
    "console.status.on": "进行中",
    "console.status.off": "未开启",
    "console.sites": "在线站点：{n}",
    "console.viewers": "群众观看：{n}",
    "action.stageOn": "上台",
    "action.stageOff": "下台",
    "action.mute": "静音",
    "action.unmute": "取消静音",
    "action.remove": "移出",
    "action.lowerHand": "放下手",
    "confirm.remove": "确定将 {name} 移出会议？",
    "badge.stage": "台上",
    "badge.hand": "举手",
    "badge.muted": "已静音",
    "badge.stalled": "主讲人连接中断",
    "badge.speaking": "正在发言",
    "stats.rtt": "延迟 {v} ms",
    "stats.loss": "丢包 {v}%",
    "stats.bitrate": "码率 {v} kbps",
    "chat.title": "文字交流",
    "chat.placeholder": "输入消息",
    "chat.send": "发送",
    "chat.label": "消息内容",
    "station.title": "站点客户端",
    "station.stage": "主画面",
    "station.waiting": "等待中心开播…",
    "station.raiseHand": "举手发言",
    "station.lowerHand": "放下手",
    "station.mic.on": "麦克风：开",
    "station.mic.off": "麦克风：关",
    "station.cam.on": "摄像头：开",
    "station.cam.off": "摄像头：关",
    "station.lockedByModerator": "已被主持人静音",
    "station.audioOnly": "仅音频模式",
    "station.audioOnly.on": "仅音频模式：开",
    "station.audioOnly.hint": "网络较差时使用：停止发送本站画面，也不再显示其他画面，只保留声音。",
    "station.videoCap": "画质",
    "station.videoCap.auto": "自动",
    "station.videoCap.high": "高清",
    "station.videoCap.mid": "标清",
    "station.videoCap.low": "流畅",
    "station.onStage": "您已被请上台，画面已切换为高清。",
    "station.self": "本站画面",
    "quality.title": "网络质量",
    "quality.good": "良好",
    "quality.fair": "一般",
    "quality.poor": "较差",
    "quality.down": "断开",
    "watch.title": "直播观看",
    "watch.waiting": "直播尚未开始，稍后自动播放…",
    "watch.playing": "正在直播",
    "watch.unmute": "点击开启声音",
    "watch.hls": "直播（HLS）",
    "watch.webrtc": "直播（实时）",
    "watch.retry": "连接中断，正在重新连接…",
    "unit.participant": "站点",
    "role.center": "中心",
    "role.institute": "所",
    "role.station": "站",
};

/** @type {Record<keyof typeof zh, string>} */
const en = {
    "app.title": "Civilization Practice Center",
    "lang.toggle": "中文",
    "lang.toggle.label": "Switch language to Chinese",
    "landing.title": "Practice Hub",
    "landing.intro": "The center broadcasts lectures and holds meetings; institutes and stations join online; households watch live.",
    "landing.library": "Digital library",
    "landing.setup.title": "First use: create the administrator",
    "landing.setup.text": "There is no administrator yet. On the computer that runs the hub, run the command below (it asks for a password of at least 10 characters), then reload this page and log in:",
    "landing.setup.after": "Then load the county's sites in one click, create the institutes' and stations' accounts and schedule activities.",
    "landing.live": "Live now",
    "landing.live.none": "Nothing is live now.",
    "landing.upcoming": "Coming up",
    "landing.upcoming.none": "No live activities are scheduled soon.",
    "landing.libraryLink": "Watch earlier activities: the digital library",
    "landing.watchNow": "Watch",
    "landing.staff": "Staff login",
    "landing.username": "Username",
    "landing.password": "Password",
    "landing.login": "Log in",
    "landing.loginFailed": "Login failed: {reason}",
    "landing.toAdmin": "{user}: to the administration",
    "landing.toSessions": "{user}: to the station's activities",
    "landing.station": "Have a join link? Open the station client",
    "onair.recording": "● Recording",
    "onair.live": "Live",
    "removed.readmit": "Let back in",
    "console.removed": "Removed",
    "console.end": "End the activity",
    "console.end.confirm": "End this activity now? Recording stops and goes to the library; every site leaves the meeting.",
    "console.ended": "The activity has ended.",
    "state.new": "Not connected",
    "state.connecting": "Connecting…",
    "state.joined": "Connected",
    "state.reconnecting": "Connection lost, reconnecting…",
    "state.closed": "Disconnected",
    "token.title": "Join",
    "token.prompt": "Open the station link you were given, or paste a join token:",
    "token.label": "Join token",
    "token.join": "Join",
    "error.token": "The token is invalid or expired: ask the center for a new link.",
    "error.media": "Cannot open the camera or microphone: ",
    "error.insecure": "Browsers only give the camera and microphone to HTTPS or local pages: open the https:// address.",
    "removed.removed_by_moderator": "The moderator removed you from the meeting.",
    "removed.duplicate_identity": "This site joined from another device or window; this one was disconnected.",
    "removed.room_closed": "The meeting has ended.",
    "removed.other": "You left the meeting.",
    "console.title": "Center console",
    "console.golive": "Go live",
    "console.stoplive": "Stop",
    "console.share": "Share screen",
    "console.unshare": "Stop sharing",
    "console.camera": "Camera",
    "console.microphone": "Microphone",
    "console.codec": "Video codec",
    "console.preview": "Local preview",
    "console.wall": "Sites",
    "console.wall.empty": "No site connected yet",
    "wall.show": "Show",
    "wall.show.online": "Sites online",
    "wall.show.hand": "Hand raised",
    "wall.show.weak": "Weak link",
    "wall.show.offline": "Offline",
    "wall.pageSize": "Per page",
    "wall.prev": "Previous",
    "wall.next": "Next",
    "wall.page": "Page {n} of {of}",
    "wall.institute.all": "All institutes",
    "wall.noCamera": "No camera",
    "badge.offline": "Offline",
    "badge.listening": "Listening",
    "action.listen": "Listen",
    "station.paused": "Nobody is watching: video upload paused",
    "station.micPaused": "The center is not listening to this station: raise your hand to be heard",
    "console.hands": "Raised hands",
    "console.hands.empty": "No raised hand",
    "console.record.start": "Start recording",
    "console.record.stop": "Stop recording",
    "console.media.recording": "Recording failed",
    "console.media.live": "Household live failed",
    "console.media.restream": "Restream failed",
    "restream.title": "Restream",
    "restream.url": "Push URL (rtmp://)",
    "restream.add": "Start pushing",
    "restream.stop": "Stop",
    "restream.connecting": "connecting",
    "restream.live": "live",
    "restream.retrying": "retrying",
    "restream.failed": "failed",
    "restream.stopped": "stopped",
    "rollcall.title": "Roll call",
    "rollcall.seconds": "Time to answer (s)",
    "rollcall.start": "Call the roll",
    "rollcall.stop": "End roll call",
    "rollcall.present": "Present",
    "rollcall.late": "Late",
    "rollcall.absent": "Absent",
    "rollcall.waiting": "Waiting",
    "rollcall.prompt": "The center is calling the roll: please answer",
    "rollcall.answer": "Present",
    "rollcall.answered": "Answered",
    "console.recording": "Recording",
    "console.householdLive": "Household live",
    "console.status.unknown": "unknown",
    "console.openHouseholds": "Open to households",
    "console.closeHouseholds": "Close to households",
    "console.status.on": "on",
    "console.status.off": "off",
    "console.sites": "Sites online: {n}",
    "console.viewers": "households watching: {n}",
    "action.stageOn": "Call on stage",
    "action.stageOff": "Send back",
    "action.mute": "Mute",
    "action.unmute": "Unmute",
    "action.remove": "Remove",
    "action.lowerHand": "Lower hand",
    "confirm.remove": "Remove {name} from the meeting?",
    "badge.stage": "On stage",
    "badge.hand": "Hand raised",
    "badge.muted": "Muted",
    "badge.stalled": "Lecturer's connection lost",
    "badge.speaking": "Speaking",
    "stats.rtt": "RTT {v} ms",
    "stats.loss": "loss {v}%",
    "stats.bitrate": "{v} kbps",
    "chat.title": "Chat",
    "chat.placeholder": "Type a message",
    "chat.send": "Send",
    "chat.label": "Message",
    "station.title": "Station client",
    "station.stage": "Stage",
    "station.waiting": "Waiting for the center to go live…",
    "station.raiseHand": "Raise hand",
    "station.lowerHand": "Lower hand",
    "station.mic.on": "Microphone: on",
    "station.mic.off": "Microphone: off",
    "station.cam.on": "Camera: on",
    "station.cam.off": "Camera: off",
    "station.lockedByModerator": "Muted by the moderator",
    "station.audioOnly": "Audio only",
    "station.audioOnly.on": "Audio only: on",
    "station.audioOnly.hint": "For weak links: stops sending this station's camera and hides incoming video; sound only.",
    "station.videoCap": "Picture quality",
    "station.videoCap.auto": "Auto",
    "station.videoCap.high": "High",
    "station.videoCap.mid": "Standard",
    "station.videoCap.low": "Smooth",
    "station.onStage": "You are on stage: your camera is sent in high quality.",
    "station.self": "This station",
    "quality.title": "Link quality",
    "quality.good": "good",
    "quality.fair": "fair",
    "quality.poor": "poor",
    "quality.down": "down",
    "watch.title": "Live",
    "watch.waiting": "Not live yet; playback starts by itself…",
    "watch.playing": "Live",
    "watch.unmute": "Tap to turn sound on",
    "watch.hls": "Live (HLS)",
    "watch.webrtc": "Live (real time)",
    "watch.retry": "Connection lost, reconnecting…",
    "unit.participant": "site",
    "role.center": "Center",
    "role.institute": "Institute",
    "role.station": "Station",
};

/** @typedef {keyof typeof zh} MessageKey */

/** @type {Record<Lang, Record<MessageKey, string>>} */
export const DICTIONARIES = { zh, en };

/** @type {Set<() => void>} */
const listeners = new Set();

/** @returns {Lang} */
function initialLang() {
    try {
        const stored = localStorage.getItem(STORAGE_KEY);
        if (stored === "en" || stored === "zh") return stored;
    } catch {
        /* storage disabled */
    }
    return "zh";
}

let current = initialLang();

/** @returns {Lang} */
export function getLang() {
    return current;
}

/** @param {Lang} lang */
export function setLang(lang) {
    current = lang;
    try {
        localStorage.setItem(STORAGE_KEY, lang);
    } catch {
        /* storage disabled */
    }
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    applyTranslations(document);
    for (const listener of listeners) listener();
}

/** @param {() => void} listener */
export function onLangChange(listener) {
    listeners.add(listener);
}

/**
 * @param {string} key
 * @param {Record<string, string | number>} [params]
 */
export function t(key, params) {
    const dict = DICTIONARIES[current];
    let text = key in dict ? dict[/** @type {MessageKey} */ (key)] : key;
    if (params) {
        for (const [name, value] of Object.entries(params)) text = text.replaceAll(`{${name}}`, String(value));
    }
    return text;
}

/**
 * Fills every element marked `data-i18n="key"` (text), and
 * `data-i18n-attr="attr:key;attr2:key2"` (attributes).
 * @param {ParentNode} root
 */
export function applyTranslations(root) {
    for (const el of root.querySelectorAll("[data-i18n]")) {
        const key = el.getAttribute("data-i18n");
        if (key) el.textContent = t(key);
    }
    for (const el of root.querySelectorAll("[data-i18n-attr]")) {
        const spec = el.getAttribute("data-i18n-attr") || "";
        for (const pair of spec.split(";")) {
            const [attr, key] = pair.split(":");
            if (attr && key) el.setAttribute(attr.trim(), t(key.trim()));
        }
    }
}

/**
 * Sets the page language and wires the toggle button (id `lang-toggle`).
 */
export function initI18n() {
    document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
    applyTranslations(document);
    const toggle = document.getElementById("lang-toggle");
    if (toggle) {
        toggle.addEventListener("click", () => setLang(current === "zh" ? "en" : "zh"));
    }
}
