function t(e,o={},...n){let a=document.createElement(e);for(let[r,i]of Object.entries(o))i===void 0||i===!1||(r==="class"?a.className=String(i):a.setAttribute(r,i===!0?"":String(i)));for(let r of n)a.append(typeof r=="string"?document.createTextNode(r):r);return a}function c(e,o){e.textContent=o}function L(e){for(;e.firstChild;)e.removeChild(e.firstChild)}function w(e,o,n,a){let r=t("select",{class:"cv-select","data-role":e});for(let i of o)r.append(t("option",{value:i},a?.[i]??i));return r.value=n,r}function p(e,o=4){if(e==null||!Number.isFinite(e))return"\u2013";let n=Math.abs(e);return n!==0&&(n<.001||n>=1e5)?e.toExponential(2):e.toFixed(o).replace(/\.?0+$/,"")||"0"}var M=`
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
`;function E(e,o){L(e);let n=document.createElement("style");n.textContent=M;let a=t("div",{class:`cv-root cv-${o}`,"data-view":o,"data-busy":"false"});return e.append(n,a),a}var A={add:"add coef \xD7 direction",ablate:"ablate direction (every layer)"},R=`
.cv-steer-side{flex:1 1 260px;border:1px solid #ddd;border-radius:4px;padding:6px;min-width:220px}
.cv-steer-side h4{margin:0 0 4px;font-size:12px}
.cv-steer-text{white-space:pre-wrap;font-family:ui-monospace,Menlo,monospace;min-height:2.8em}
.cv-steer-badge{display:inline-block;border-radius:3px;padding:0 5px;font-size:11px;margin-right:6px}
.cv-steer-badge[data-refused="true"]{background:#fde2d8;color:#8a2a0a}
.cv-steer-badge[data-refused="false"]{background:#dff0e4;color:#1d5a2f}
.cv-steer-prompt{font:inherit;width:520px;max-width:80vw;padding:2px 4px}
.cv-steer-label{display:flex;gap:6px;align-items:center}
`;function S(e,o){let n=t("span",{class:"cv-steer-badge","data-role":`${o}-verdict`}),a=t("span",{class:"cv-muted","data-role":`${o}-score`}),r=t("div",{class:"cv-steer-text","data-role":o});return{box:t("div",{class:"cv-steer-side"},t("h4",{},e),t("div",{},n,a),r),show(s){let l="text"in s;c(r,l?s.text||"(empty continuation)":"\u2026"),n.setAttribute("data-refused",l?String(s.refused):""),c(n,l?s.refused?"refuses":"complies":""),n.title="refuses: the continuation starts with a refusal phrase (circuitviz.engine.REFUSAL_PHRASES)",c(a,l?`refusal score ${p(s.score,2)}`:""),a.title="Log-odds that the first generated token starts a refusal (I, Sorry, Unfortunately, As)"}}}function N({model:e,el:o}){let n=E(o,"steering"),a=document.createElement("style");a.textContent=R;let r=t("input",{class:"cv-steer-prompt","data-role":"prompt",type:"text",maxlength:256}),i=w("mode",["add","ablate"],e.get("mode"),A),s=t("input",{type:"range","data-role":"coef",step:.1}),l=t("span",{"data-role":"coef-value"}),k=t("span",{class:"cv-busy"},"generating\u2026"),x=t("div",{class:"cv-error","data-role":"error",role:"alert"}),b=t("div",{class:"cv-muted","data-role":"standalone-notice"}),m=S("Before (no intervention)","before"),v=S("After","after"),T=v.box.querySelector("h4");n.append(a,t("div",{class:"cv-toolbar"},t("span",{class:"cv-title","data-role":"title"}),k),t("div",{class:"cv-toolbar"},t("label",{class:"cv-steer-label"},"prompt",r)),t("div",{class:"cv-toolbar"},i,t("label",{class:"cv-steer-label"},"coef",s),l),b,x,t("div",{class:"cv-row"},m.box,v.box));let u=!0,h=d=>{d.type!=="hello"||d.live!==!1||(u=!1,f())};e.on("msg:custom",h),r.addEventListener("change",()=>{e.set("prompt",r.value),e.save_changes()}),i.addEventListener("change",()=>{e.set("mode",i.value),e.save_changes()}),s.addEventListener("input",()=>c(l,p(Number(s.value),2))),s.addEventListener("change",()=>{e.set("coef",Number(s.value)),e.save_changes()});function f(){let d=e.get("coef_max"),g=e.get("mode");s.min=String(-d),s.max=String(d),s.value=String(e.get("coef")),s.disabled=g!=="add"||!u,r.disabled=i.disabled=!u,c(b,u?"":"This is a standalone export: it shows the continuations as saved. Steering with another prompt, coef or mode needs the live kernel."),c(l,g==="add"?p(e.get("coef"),2):"(unused when ablating)"),document.activeElement!==r&&(r.value=e.get("prompt")),i.value=g,c(n.querySelector('[data-role="title"]'),`Refusal steering \xB7 layer ${e.get("layer")}`),c(T,g==="add"?`After (add ${p(e.get("coef"),2)} \xD7 direction at layer ${e.get("layer")})`:"After (direction ablated at every layer)"),m.show(e.get("before")),v.show(e.get("after")),c(x,e.get("error")||""),n.setAttribute("data-busy",String(!!e.get("busy")))}f();let y="change:prompt change:coef change:mode change:coef_max change:layer change:before change:after change:busy change:error";return e.on(y,f),e.send({type:"hello"}),()=>{e.off(y,f),e.off("msg:custom",h)}}var $={render:N};export{$ as default};
