function t(e,o={},...r){let a=document.createElement(e);for(let[n,i]of Object.entries(o))i===void 0||i===!1||(n==="class"?a.className=String(i):a.setAttribute(n,i===!0?"":String(i)));for(let n of r)a.append(typeof n=="string"?document.createTextNode(n):n);return a}function c(e,o){e.textContent=o}function S(e){for(;e.firstChild;)e.removeChild(e.firstChild)}function m(e,o,r,a){let n=t("select",{class:"cv-select","data-role":e});for(let i of o)n.append(t("option",{value:i},a?.[i]??i));return n.value=r,n}function l(e,o=4){if(e==null||!Number.isFinite(e))return"\u2013";let r=Math.abs(e);return r!==0&&(r<.001||r>=1e5)?e.toExponential(2):e.toFixed(o).replace(/\.?0+$/,"")||"0"}var k=`
.cv-root{font:12px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;background:#fff;position:relative;padding:4px}
.cv-toolbar{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin:4px 0}
.cv-title{font-weight:600;margin-right:8px}
.cv-button,.cv-select{font:inherit;padding:2px 8px;border:1px solid #bbb;border-radius:4px;background:#fafafa;cursor:pointer}
.cv-button:hover{background:#eee}
.cv-tooltip{position:absolute;pointer-events:none;background:rgba(20,20,20,.92);color:#fff;padding:4px 6px;border-radius:4px;white-space:pre-wrap;z-index:10;display:none;font-size:11px;width:max-content;max-width:420px;overflow:hidden}
.cv-error{color:#a40000;background:#fff0f0;border:1px solid #f3b0b0;border-radius:4px;padding:4px 6px;margin:4px 0;white-space:pre-wrap}
.cv-error:empty{display:none}
.cv-hm{position:relative;display:inline-block;user-select:none}
.cv-hm canvas{display:block}
.cv-hm-plot{position:relative}
.cv-hm-head{display:flex;flex-wrap:wrap;gap:4px 8px;align-items:center;margin-bottom:2px}
.cv-hm-title{font-weight:600;overflow-wrap:anywhere;flex:1 1 100%}
.cv-hm-head .cv-button{padding:0 6px}
.cv-hm-head .cv-button:disabled{opacity:.45;cursor:default}
.cv-hits{position:absolute;left:0;top:0}
.cv-hit{position:absolute;cursor:pointer;background:transparent}
.cv-hit:focus-visible,.cv-node:focus-visible{outline:2px solid #0072B2;outline-offset:1px}
.cv-panel{min-width:220px;max-width:360px;border-left:1px solid #ddd;padding-left:10px}
.cv-panel table{border-collapse:collapse}
.cv-panel td{padding:1px 6px 1px 0}
.cv-row{display:flex;gap:12px;align-items:flex-start;flex-wrap:wrap}
.cv-busy{color:#666;font-style:italic;visibility:hidden}
.cv-root[data-busy="true"] .cv-busy{visibility:visible}
.cv-root[data-busy="true"] .cv-main{opacity:.7}
.cv-tokens{white-space:pre-wrap;line-height:1.9;max-height:260px;overflow:auto;border:1px solid #eee;padding:4px;font-family:ui-monospace,Menlo,monospace}
.cv-token{padding:1px 0;box-shadow:inset -1px 0 #e4e4e4;border-bottom:3px solid transparent;cursor:default}
.cv-token[data-focus="true"]{outline:2px solid #333}
.cv-muted{color:#777}
.cv-topk td:last-child{text-align:right;font-variant-numeric:tabular-nums}
.cv-topk-wrap{display:flex;gap:14px;align-items:flex-start;margin-top:4px}
.cv-notice{background:#f4f7fb;border:1px solid #c9d6e6;border-radius:4px;padding:4px 6px;margin:4px 0}
.cv-per-prompt{margin-top:6px;max-height:240px;overflow:auto}
.cv-per-prompt td{text-align:right;font-variant-numeric:tabular-nums}
`;function h(e,o){S(e);let r=document.createElement("style");r.textContent=k;let a=t("div",{class:`cv-root cv-${o}`,"data-view":o,"data-busy":"false"});return e.append(r,a),a}var L={add:"add coef \xD7 direction",ablate:"ablate direction (every layer)"},T=`
.cv-steer-side{flex:1 1 260px;border:1px solid #ddd;border-radius:4px;padding:6px;min-width:220px}
.cv-steer-side h4{margin:0 0 4px;font-size:12px}
.cv-steer-text{white-space:pre-wrap;font-family:ui-monospace,Menlo,monospace;min-height:2.8em}
.cv-steer-badge{display:inline-block;border-radius:3px;padding:0 5px;font-size:11px;margin-right:6px}
.cv-steer-badge[data-refused="true"]{background:#fde2d8;color:#8a2a0a}
.cv-steer-badge[data-refused="false"]{background:#dff0e4;color:#1d5a2f}
.cv-steer-prompt{font:inherit;width:520px;max-width:80vw;padding:2px 4px}
.cv-steer-label{display:flex;gap:6px;align-items:center}
`;function y(e,o){let r=t("span",{class:"cv-steer-badge","data-role":`${o}-verdict`}),a=t("span",{class:"cv-muted","data-role":`${o}-score`}),n=t("div",{class:"cv-steer-text","data-role":o});return{box:t("div",{class:"cv-steer-side"},t("h4",{},e),t("div",{},r,a),n),show(s){let d="text"in s;c(n,d?s.text||"(empty continuation)":"\u2026"),r.setAttribute("data-refused",d?String(s.refused):""),c(r,d?s.refused?"refuses":"complies":""),r.title="refuses: the continuation starts with a refusal phrase (circuitviz.engine.REFUSAL_PHRASES)",c(a,d?`refusal score ${l(s.score,2)}`:""),a.title="Log-odds that the first generated token starts a refusal (I, Sorry, Unfortunately, As)"}}}function M({model:e,el:o}){let r=h(o,"steering"),a=document.createElement("style");a.textContent=T;let n=t("input",{class:"cv-steer-prompt","data-role":"prompt",type:"text",maxlength:256}),i=m("mode",["add","ablate"],e.get("mode"),L),s=t("input",{type:"range","data-role":"coef",step:.1}),d=t("span",{"data-role":"coef-value"}),w=t("span",{class:"cv-busy"},"generating\u2026"),g=t("div",{class:"cv-error","data-role":"error",role:"alert"}),v=y("Before (no intervention)","before"),u=y("After","after"),E=u.box.querySelector("h4");r.append(a,t("div",{class:"cv-toolbar"},t("span",{class:"cv-title","data-role":"title"}),w),t("div",{class:"cv-toolbar"},t("label",{class:"cv-steer-label"},"prompt",n)),t("div",{class:"cv-toolbar"},i,t("label",{class:"cv-steer-label"},"coef",s),d),g,t("div",{class:"cv-row"},v.box,u.box)),n.addEventListener("change",()=>{e.set("prompt",n.value),e.save_changes()}),i.addEventListener("change",()=>{e.set("mode",i.value),e.save_changes()}),s.addEventListener("input",()=>c(d,l(Number(s.value),2))),s.addEventListener("change",()=>{e.set("coef",Number(s.value)),e.save_changes()});function f(){let b=e.get("coef_max"),p=e.get("mode");s.min=String(-b),s.max=String(b),s.value=String(e.get("coef")),s.disabled=p!=="add",c(d,p==="add"?l(e.get("coef"),2):"(unused when ablating)"),document.activeElement!==n&&(n.value=e.get("prompt")),i.value=p,c(r.querySelector('[data-role="title"]'),`Refusal steering \xB7 layer ${e.get("layer")}`),c(E,p==="add"?`After (add ${l(e.get("coef"),2)} \xD7 direction at layer ${e.get("layer")})`:"After (direction ablated at every layer)"),v.show(e.get("before")),u.show(e.get("after")),c(g,e.get("error")||""),r.setAttribute("data-busy",String(!!e.get("busy")))}f();let x="change:prompt change:coef change:mode change:coef_max change:layer change:before change:after change:busy change:error";return e.on(x,f),()=>e.off(x,f)}var N={render:M};export{N as default};
