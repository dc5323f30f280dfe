// @ts-check
/**
 * The digital library: browse by theme, search, filter, page through
 * `GET /api/library`; a center administrator also uploads, follows each
 * item's processing job, publishes, unpublishes and deletes.
 *
 * Also the library pages' shared parts (their strings, the API calls), which
 * replay.js imports. The language choice is i18n.js's (same toggle, same stored
 * choice); the strings are our own dictionary, marked `data-lt` in the HTML.
 */

import { getLang, initI18n, onLangChange } from "./i18n.js";

/** @typedef {'theory' | 'education' | 'culture' | 'science' | 'fitness'} Theme */

/** @type {Theme[]} */
export const THEMES = ["theory", "education", "culture", "science", "fitness"];

const zh = {
    "library.title": "数字图书馆",
    "replay.title": "节目回放",
    skip: "跳到结果",
    "themes.label": "主题",
    "themes.all": "全部",
    "theme.theory": "理论宣讲",
    "theme.education": "教育服务",
    "theme.culture": "文化服务",
    "theme.science": "科技科普",
    "theme.fitness": "健身体育",
    "search.q": "搜索标题、简介、标签",
    "search.site": "站点",
    "search.from": "开始日期",
    "search.to": "结束日期",
    "search.go": "搜索",
    "search.clear": "清除",
    "results.title": "节目列表",
    "results.count": "共 {n} 个节目",
    "results.none": "没有找到节目。",
    "results.error": "加载失败：{e}",
    "pager.label": "翻页",
    "pager.prev": "上一页",
    "pager.next": "下一页",
    "pager.info": "第 {page} / {pages} 页",
    "item.views": "{n} 次播放",
    "status.processing": "处理中",
    "status.ready": "可播放",
    "status.failed": "处理失败",
    "item.published": "已公开",
    "item.unpublished": "未公开",
    "job.progress": "处理进度 {p}%",
    "job.queued": "排队中",
    "job.failed": "处理失败：{e}",
    "action.publish": "公开",
    "action.unpublish": "取消公开",
    "action.delete": "删除",
    "confirm.delete": "确定删除《{title}》及其文件？",
    "admin.login": "管理员登录",
    "admin.logout": "退出登录",
    "admin.who": "管理员：{name}",
    "admin.upload": "上传视频",
    "login.username": "用户名",
    "login.password": "密码",
    "login.go": "登录",
    "login.failed": "登录失败：{e}",
    "login.notAdmin": "该账号不是中心管理员。",
    "upload.file": "视频文件",
    "upload.title": "标题",
    "upload.theme": "主题",
    "upload.date": "日期",
    "upload.speaker": "主讲人",
    "upload.site": "站点",
    "upload.tags": "标签（用逗号分隔）",
    "upload.description": "简介",
    "upload.published": "处理完成后公开",
    "upload.go": "上传",
    "upload.sending": "正在上传…",
    "upload.done": "已上传《{title}》，正在处理。",
    "upload.failed": "上传失败：{e}",
    "meta.theme": "主题",
    "meta.speaker": "主讲人",
    "meta.date": "日期",
    "meta.duration": "时长",
    "meta.site": "站点",
    "meta.views": "播放次数",
    "meta.tags": "标签",
    "replay.download": "下载视频（MP4）",
    "replay.notFound": "没有这个节目，或它尚未公开。",
    "replay.notReady": "节目正在处理，稍后再来。",
    "replay.unplayable": "视频无法播放，请下载后观看。",
};

/** @type {Record<keyof typeof zh, string>} */
const en = {
    "library.title": "Digital library",
    "replay.title": "Replay",
    skip: "Skip to results",
    "themes.label": "Themes",
    "themes.all": "All",
    "theme.theory": "Theory lectures",
    "theme.education": "Education",
    "theme.culture": "Culture",
    "theme.science": "Science",
    "theme.fitness": "Fitness",
    "search.q": "Search titles, descriptions, tags",
    "search.site": "Site",
    "search.from": "From",
    "search.to": "To",
    "search.go": "Search",
    "search.clear": "Clear",
    "results.title": "Programs",
    "results.count": "{n} programs",
    "results.none": "No program found.",
    "results.error": "Could not load: {e}",
    "pager.label": "Pages",
    "pager.prev": "Previous",
    "pager.next": "Next",
    "pager.info": "Page {page} of {pages}",
    "item.views": "{n} views",
    "status.processing": "Processing",
    "status.ready": "Ready",
    "status.failed": "Failed",
    "item.published": "Published",
    "item.unpublished": "Not published",
    "job.progress": "Processing {p}%",
    "job.queued": "Queued",
    "job.failed": "Processing failed: {e}",
    "action.publish": "Publish",
    "action.unpublish": "Unpublish",
    "action.delete": "Delete",
    "confirm.delete": "Delete “{title}” and its files?",
    "admin.login": "Administrator login",
    "admin.logout": "Log out",
    "admin.who": "Administrator: {name}",
    "admin.upload": "Upload a video",
    "login.username": "Username",
    "login.password": "Password",
    "login.go": "Log in",
    "login.failed": "Login failed: {e}",
    "login.notAdmin": "This account is not a center administrator.",
    "upload.file": "Video file",
    "upload.title": "Title",
    "upload.theme": "Theme",
    "upload.date": "Date",
    "upload.speaker": "Speaker",
    "upload.site": "Site",
    "upload.tags": "Tags (comma-separated)",
    "upload.description": "Description",
    "upload.published": "Publish once processed",
    "upload.go": "Upload",
    "upload.sending": "Uploading…",
    "upload.done": "Uploaded “{title}”; processing.",
    "upload.failed": "Upload failed: {e}",
    "meta.theme": "Theme",
    "meta.speaker": "Speaker",
    "meta.date": "Date",
    "meta.duration": "Duration",
    "meta.site": "Site",
    "meta.views": "Views",
    "meta.tags": "Tags",
    "replay.download": "Download (MP4)",
    "replay.notFound": "No such program, or it is not published.",
    "replay.notReady": "This program is still being processed; come back later.",
    "replay.unplayable": "The video cannot play here: download it instead.",
};

/** @typedef {keyof typeof zh} TextKey */

/**
 * A library string in the current language, `{name}` placeholders filled.
 * @param {TextKey} key
 * @param {Record<string, string | number>} [params]
 */
export function lt(key, params) {
    let text = (getLang() === "en" ? en : zh)[key];
    for (const [name, value] of Object.entries(params || {})) text = text.replaceAll(`{${name}}`, String(value));
    return text;
}

/** @param {string} key @returns {key is TextKey} */
function isTextKey(key) {
    return key in zh;
}

/**
 * Fills `data-lt="key"` (text) and `data-lt-attr="attr:key;…"` (attributes).
 * @param {ParentNode} root
 */
export function applyLibraryText(root) {
    for (const el of root.querySelectorAll("[data-lt]")) {
        const key = el.getAttribute("data-lt") || "";
        if (isTextKey(key)) el.textContent = lt(key);
    }
    for (const el of root.querySelectorAll("[data-lt-attr]")) {
        for (const pair of (el.getAttribute("data-lt-attr") || "").split(";")) {
            const [attr, key] = pair.split(":").map((s) => s.trim());
            if (attr && key && isTextKey(key)) el.setAttribute(attr, lt(key));
        }
    }
}

/**
 * Starts the shared language handling: i18n.js's toggle and stored choice, our
 * strings; `render` runs now and after every switch (for generated content).
 * @param {TextKey} titleKey the document title
 * @param {() => void} render
 */
export function initLibraryText(titleKey, render) {
    const apply = () => {
        applyLibraryText(document);
        document.title = lt(titleKey);
        render();
    };
    initI18n();
    onLangChange(apply);
    apply();
}

/** @param {string} theme */
export function themeLabel(theme) {
    const key = `theme.${theme}`;
    return isTextKey(key) ? lt(key) : theme;
}

/**
 * `1:02:03` or `4:05`; empty while unknown.
 * @param {number | null} seconds
 */
export function formatDuration(seconds) {
    if (seconds === null || !Number.isFinite(seconds)) return "";
    const total = Math.round(seconds);
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

/**
 * @typedef {{
 *   id: string, title: string, theme: Theme, theme_label: string, speaker: string,
 *   site: string, date: string, duration: number | null, tags: string[],
 *   description: string, views: number, published: boolean,
 *   status: 'processing' | 'ready' | 'failed',
 *   hls_url: string | null, mp4_url: string | null, poster_url: string | null
 * }} Item
 * @typedef {{ status: 'queued' | 'running' | 'done' | 'failed', progress: number, error: string | null }} Job
 * @typedef {{ items: Item[], total: number, page: number, page_size: number }} ItemPage
 */

export class ApiError extends Error {
    /** @param {number} status @param {string} message */
    constructor(status, message) {
        super(message);
        this.status = status;
    }
}

/** The hub_csrf cookie, echoed in the header the hub checks on state changes. */
function csrfToken() {
    const found = document.cookie.split("; ").find((c) => c.startsWith("hub_csrf="));
    return found ? decodeURIComponent(found.slice("hub_csrf=".length)) : "";
}

/**
 * JSON from the hub (null for 204); ApiError with the hub's `detail` otherwise.
 * @param {string} url
 * @param {RequestInit} [init]
 * @returns {Promise<any>}
 */
export async function api(url, init = {}) {
    const headers = new Headers(init.headers);
    if (init.method && init.method !== "GET") headers.set("X-CSRF-Token", csrfToken());
    const response = await fetch(url, { ...init, headers, credentials: "same-origin" });
    if (!response.ok) {
        let detail = response.statusText;
        try {
            const body = await response.json();
            detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
        } catch {
            /* not JSON */
        }
        throw new ApiError(response.status, detail || String(response.status));
    }
    return response.status === 204 ? null : response.json();
}

/** @param {string} id */
function byId(id) {
    const el = document.getElementById(id);
    if (!el) throw new Error(`#${id} missing`);
    return el;
}

const PAGE_SIZE = 12;
const JOB_POLL_MS = 1000;

/** The browse page. */
export function startLibrary() {
    const form = /** @type {HTMLFormElement} */ (byId("search"));
    const input = {
        q: /** @type {HTMLInputElement} */ (byId("q")),
        site: /** @type {HTMLInputElement} */ (byId("site")),
        from: /** @type {HTMLInputElement} */ (byId("date-from")),
        to: /** @type {HTMLInputElement} */ (byId("date-to")),
    };
    const themesBox = byId("themes");
    const results = byId("results");
    const summary = byId("summary");
    const pageInfo = byId("page-info");
    const prev = /** @type {HTMLButtonElement} */ (byId("prev"));
    const next = /** @type {HTMLButtonElement} */ (byId("next"));

    /** The view, mirrored in the address so a search can be shared or bookmarked. */
    const params = new URLSearchParams(location.search);
    const state = {
        theme: /** @type {Theme | ''} */ (THEMES.find((t) => t === params.get("theme")) || ""),
        q: params.get("q") || "",
        site: params.get("site") || "",
        from: params.get("date_from") || "",
        to: params.get("date_to") || "",
        page: Math.max(1, Number(params.get("page")) || 1),
        pageSize: Math.min(100, Math.max(1, Number(params.get("page_size")) || PAGE_SIZE)),
        /** @type {ItemPage | null} */
        data: null,
        /** @type {string | null} */
        error: null,
        admin: false,
        /** @type {Map<string, Job>} item id → its latest job, once followed */
        jobs: new Map(),
        /** @type {Set<string>} items whose job is being polled */
        following: new Set(),
    };
    Object.assign(window, { practiceHubLibrary: state }); // test and debugging hook
    input.q.value = state.q;
    input.site.value = state.site;
    input.from.value = state.from;
    input.to.value = state.to;

    function query() {
        const q = new URLSearchParams();
        if (state.theme) q.set("theme", state.theme);
        if (state.q) q.set("q", state.q);
        if (state.site) q.set("site", state.site);
        if (state.from) q.set("date_from", state.from);
        if (state.to) q.set("date_to", state.to);
        if (state.page > 1) q.set("page", String(state.page));
        if (state.pageSize !== PAGE_SIZE) q.set("page_size", String(state.pageSize));
        return q;
    }

    async function load() {
        const q = query();
        history.replaceState(null, "", q.size ? `?${q}` : location.pathname);
        q.set("page_size", String(state.pageSize));
        if (state.admin) q.set("include_unpublished", "true");
        try {
            state.data = /** @type {ItemPage} */ (await api(`/api/library?${q}`));
            state.error = null;
        } catch (e) {
            state.data = null;
            state.error = e instanceof Error ? e.message : String(e);
        }
        for (const item of state.data?.items || []) {
            if (item.status === "processing") void followJob(item.id);
        }
        render();
    }

    // Built once and updated, never replaced: a keyboard user's focus stays on the
    // theme just chosen.
    const themeButtons = [/** @type {Theme | ''} */ (""), ...THEMES].map((theme) => {
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.theme = theme;
        button.addEventListener("click", () => {
            state.theme = theme;
            state.page = 1;
            renderThemes();
            void load();
        });
        return button;
    });
    themesBox.replaceChildren(...themeButtons);

    function renderThemes() {
        for (const button of themeButtons) {
            const theme = button.dataset.theme || "";
            button.textContent = theme ? themeLabel(theme) : lt("themes.all");
            button.setAttribute("aria-pressed", String(theme === state.theme));
        }
    }

    /** @param {Item} item */
    function card(item) {
        const li = document.createElement("li");
        li.className = "item";
        li.dataset.id = item.id;
        li.dataset.status = item.status;
        const playable = item.status === "ready";
        const link = document.createElement(playable ? "a" : "span");
        link.className = "poster";
        // A second way to the same page for the mouse: the title link is the one
        // keyboards and screen readers get.
        link.setAttribute("aria-hidden", "true");
        if (link instanceof HTMLAnchorElement) {
            link.href = `/replay/${item.id}`;
            link.tabIndex = -1;
        }
        if (item.poster_url) {
            const img = document.createElement("img");
            img.src = item.poster_url;
            img.alt = "";
            img.loading = "lazy";
            link.append(img);
        }
        const duration = formatDuration(item.duration);
        if (duration) {
            const badge = document.createElement("span");
            badge.className = "duration";
            badge.textContent = duration;
            link.append(badge);
        }
        const title = document.createElement("h3");
        const titleLink = document.createElement(playable ? "a" : "span");
        titleLink.className = "title-link";
        if (titleLink instanceof HTMLAnchorElement) titleLink.href = `/replay/${item.id}`;
        titleLink.textContent = item.title;
        title.append(titleLink);
        const meta = document.createElement("p");
        meta.className = "meta-line";
        meta.textContent = [themeLabel(item.theme), item.date, item.speaker, item.site]
            .filter(Boolean)
            .join(" · ");
        li.append(link, title, meta);
        if (state.admin) li.append(adminControls(item));
        return li;
    }

    /** @param {Item} item */
    function adminControls(item) {
        const box = document.createElement("div");
        box.className = "admin-controls";
        const status = document.createElement("p");
        status.className = "item-status";
        status.dataset.status = item.status;
        const published = lt(item.published ? "item.published" : "item.unpublished");
        status.textContent = `${lt(`status.${item.status}`)} · ${published} · ${lt("item.views", { n: item.views })}`;
        box.append(status);
        const job = state.jobs.get(item.id);
        if (item.status === "processing" && job) {
            const progress = document.createElement("progress");
            progress.max = 100;
            progress.value = job.progress;
            const label =
                job.status === "queued"
                    ? lt("job.queued")
                    : lt("job.progress", { p: Math.round(job.progress) });
            progress.setAttribute("aria-label", label);
            const text = document.createElement("span");
            text.className = "job-progress";
            text.textContent = job.error ? `${label} (${job.error})` : label;
            box.append(progress, text);
        } else if (item.status === "failed" && job?.error) {
            const text = document.createElement("span");
            text.textContent = lt("job.failed", { e: job.error });
            box.append(text);
        }
        const publish = document.createElement("button");
        publish.type = "button";
        publish.className = "publish";
        publish.textContent = lt(item.published ? "action.unpublish" : "action.publish");
        publish.addEventListener("click", () =>
            act(() =>
                api(`/api/library/${item.id}`, {
                    method: "PATCH",
                    headers: { "Content-Type": "application/json" },
                    body: JSON.stringify({ published: !item.published }),
                }),
            ),
        );
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "delete";
        remove.textContent = lt("action.delete");
        remove.addEventListener("click", () => {
            if (confirm(lt("confirm.delete", { title: item.title }))) {
                act(() => api(`/api/library/${item.id}`, { method: "DELETE" }));
            }
        });
        const actions = document.createElement("div");
        actions.className = "row";
        actions.append(publish, remove);
        box.append(actions);
        return box;
    }

    /** @param {() => Promise<unknown>} change */
    function act(change) {
        change().then(load, (e) => {
            summary.textContent = lt("results.error", { e: e instanceof Error ? e.message : String(e) });
        });
    }

    /**
     * Polls an item's job until it ends, re-rendering its progress; reloads the
     * list when it is done (the item then has its poster and duration).
     * @param {string} id
     */
    async function followJob(id) {
        if (state.following.has(id)) return;
        state.following.add(id);
        for (;;) {
            /** @type {Job} */
            let job;
            try {
                job = await api(`/api/library/${id}/job`);
            } catch {
                break; // deleted, or no longer visible
            }
            state.jobs.set(id, job);
            render();
            if (job.status === "done" || job.status === "failed") break;
            await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
        }
        state.following.delete(id);
        await load();
    }

    function render() {
        renderThemes();
        const data = state.data;
        if (state.error !== null || !data) {
            summary.textContent = state.error === null ? "" : lt("results.error", { e: state.error });
            results.replaceChildren();
            return;
        }
        summary.textContent = data.total ? lt("results.count", { n: data.total }) : lt("results.none");
        // Cards are rebuilt (a job's progress re-renders every second): put the focus
        // back on the same control of the same item.
        const focused = document.activeElement;
        const within = focused instanceof HTMLElement ? focused.closest("li.item") : null;
        const selector =
            within instanceof HTMLElement && focused
                ? `li.item[data-id="${within.dataset.id}"] ${focused.tagName}${focused.className ? `.${focused.className}` : ""}`
                : null;
        results.replaceChildren(...data.items.map(card));
        const again = selector ? results.querySelector(selector) : null;
        if (again instanceof HTMLElement) again.focus();
        const pages = Math.max(1, Math.ceil(data.total / data.page_size));
        pageInfo.textContent = lt("pager.info", { page: data.page, pages });
        prev.disabled = data.page <= 1;
        next.disabled = data.page >= pages;
    }

    form.addEventListener("submit", (event) => {
        event.preventDefault();
        state.q = input.q.value.trim();
        state.site = input.site.value.trim();
        state.from = input.from.value;
        state.to = input.to.value;
        state.page = 1;
        void load();
    });
    byId("search-clear").addEventListener("click", () => {
        form.reset();
        Object.assign(state, { q: "", site: "", from: "", to: "", page: 1 });
        void load();
    });
    for (const [button, step] of /** @type {const} */ ([
        [prev, -1],
        [next, 1],
    ])) {
        button.addEventListener("click", () => {
            state.page = Math.max(1, state.page + step);
            void load().then(() => results.focus());
        });
    }

    initLibraryText("library.title", render);
    startAdmin(state, load, followJob);
    void load();
}

/**
 * Login, the administrator's upload form and whether the list shows
 * unpublished items and controls.
 * @param {{ admin: boolean }} state
 * @param {() => Promise<void>} load
 * @param {(id: string) => Promise<void>} followJob
 */
function startAdmin(state, load, followJob) {
    const adminPanel = byId("admin");
    const loginBox = /** @type {HTMLDetailsElement} */ (byId("login-box"));
    const loginForm = /** @type {HTMLFormElement} */ (byId("login"));
    const loginStatus = byId("login-status");
    const who = byId("who");
    const logout = /** @type {HTMLButtonElement} */ (byId("logout"));
    const upload = /** @type {HTMLFormElement} */ (byId("upload"));
    const uploadStatus = byId("upload-status");
    const uploadProgress = /** @type {HTMLProgressElement} */ (byId("upload-progress"));
    const uploadButton = /** @type {HTMLButtonElement} */ (byId("upload-go"));
    const themeSelect = /** @type {HTMLSelectElement} */ (byId("upload-theme"));
    const date = /** @type {HTMLInputElement} */ (byId("upload-date"));
    /** @type {string | null} */
    let username = null;

    function renderAdmin() {
        themeSelect.replaceChildren(
            ...THEMES.map((theme) => new Option(themeLabel(theme), theme, false, theme === themeSelect.value)),
        );
        adminPanel.hidden = !state.admin;
        loginBox.hidden = state.admin;
        logout.hidden = !state.admin;
        who.hidden = !state.admin;
        who.textContent = username ? lt("admin.who", { name: username }) : "";
    }
    onLangChange(renderAdmin);

    /** @param {{ username: string, role: string } | null} account */
    async function become(account) {
        const admin = account?.role === "center_admin";
        username = admin && account ? account.username : null;
        if (admin !== state.admin) {
            state.admin = admin;
            await load();
        }
        renderAdmin();
    }

    loginForm.addEventListener("submit", async (event) => {
        event.preventDefault();
        const data = new FormData(loginForm);
        loginStatus.textContent = "";
        try {
            const { account } = await api("/api/login", {
                method: "POST",
                headers: { "Content-Type": "application/json" },
                body: JSON.stringify({ username: data.get("username"), password: data.get("password") }),
            });
            loginForm.reset();
            if (account.role !== "center_admin") loginStatus.textContent = lt("login.notAdmin");
            await become(account);
        } catch (e) {
            loginStatus.textContent = lt("login.failed", { e: e instanceof Error ? e.message : String(e) });
        }
    });
    logout.addEventListener("click", async () => {
        await api("/api/logout", { method: "POST" }).catch(() => {});
        await become(null);
    });

    upload.addEventListener("submit", (event) => {
        event.preventDefault();
        const body = new FormData(upload);
        body.set("published", String(/** @type {HTMLInputElement} */ (byId("upload-published")).checked));
        const title = String(body.get("title") || "");
        // XMLHttpRequest, not fetch: it reports upload progress, and lectures are large.
        const xhr = new XMLHttpRequest();
        xhr.open("POST", "/api/library/uploads");
        xhr.setRequestHeader("X-CSRF-Token", csrfToken());
        xhr.responseType = "json";
        xhr.upload.addEventListener("progress", (e) => {
            if (e.lengthComputable) uploadProgress.value = (100 * e.loaded) / e.total;
        });
        const finish = (/** @type {string} */ message) => {
            uploadStatus.textContent = message;
            uploadButton.disabled = false;
            uploadProgress.hidden = true;
        };
        xhr.addEventListener("load", () => {
            const answer = xhr.response;
            if (xhr.status === 202 && answer?.item) {
                finish(lt("upload.done", { title }));
                upload.reset();
                date.valueAsDate = new Date();
                void load();
                void followJob(answer.item.id);
            } else {
                const detail = answer?.detail;
                finish(lt("upload.failed", { e: typeof detail === "string" ? detail : `HTTP ${xhr.status}` }));
            }
        });
        xhr.addEventListener("error", () => finish(lt("upload.failed", { e: "network" })));
        uploadButton.disabled = true;
        uploadProgress.hidden = false;
        uploadProgress.value = 0;
        uploadStatus.textContent = lt("upload.sending");
        xhr.send(body);
    });

    date.valueAsDate = new Date();
    renderAdmin();
    api("/api/me").then(become, () => become(null));
}
