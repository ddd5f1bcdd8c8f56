"""Generate the embedded demo table: invented clinical-style snippets, no real patient data.

Run: python scripts/make_demo_data.py  (writes src/medclf/demo/clinical_snippets.csv)

Each snippet is assembled from templates: a patient, a presenting complaint, a finding and a
plan. Most use vocabulary typical of one specialty (easy cases); about a quarter present a
symptom that several specialties share (chest pain, breathlessness, dizziness, back pain,
abdominal pain, itching) where only the finding or plan tells the specialty; some carry another
specialty's complaint with a work-up that points elsewhere; a few give little to go on at all
(confusable, sometimes undecidable cases, as in real referral notes).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SEED = 20261125
PER_CLASS = 100

PATIENT = [
    "{age}-year-old {sex}", "{age} yo {sex}", "Pt is a {age}-year-old {sex}", "{sex_cap}, {age},",
    "This {age}-year-old {sex}", "A {age} year old {sex}",
]
SEXES = ["man", "woman", "male", "female"]
DURATION = ["for 2 days", "since yesterday", "for three weeks", "over the past month", "for 6 hours",
            "intermittently for a year", "since this morning", "for several days", "after a fall last week", ""]

SPECIALTY = {
    "cardiology": {
        "complaint": ["crushing chest pain radiating to the left arm", "palpitations and a racing heart",
                      "exertional chest tightness", "ankle swelling and orthopnea", "a syncopal episode while climbing stairs",
                      "irregular heartbeat noticed on a smartwatch", "chest pressure relieved by rest"],
        "finding": ["ECG shows ST elevation in the inferior leads", "troponin is elevated at 0.8", "echo shows an ejection fraction of 30%",
                    "atrial fibrillation with rapid ventricular response", "a new systolic murmur at the right upper sternal border",
                    "BNP markedly raised with bibasal crackles", "Holter monitor captured runs of ventricular tachycardia"],
        "plan": ["start dual antiplatelet therapy and refer for catheterisation", "begin beta-blocker and anticoagulation",
                 "uptitrate diuretics and ACE inhibitor", "arrange stress echocardiogram", "cardiology follow-up for ablation work-up",
                 "consider pacemaker implantation"],
    },
    "pulmonology": {
        "complaint": ["productive cough and wheeze", "progressive breathlessness on exertion", "haemoptysis",
                      "nocturnal cough and chest tightness", "pleuritic pain with fever", "chronic cough in a long-term smoker",
                      "snoring and daytime sleepiness"],
        "finding": ["spirometry shows an FEV1/FVC ratio of 0.58", "chest X-ray shows right lower lobe consolidation",
                    "CT reveals a 2 cm spiculated nodule", "oxygen saturation 88% on room air", "diffuse expiratory wheeze on auscultation",
                    "pleural effusion with dullness at the left base", "sleep study shows an apnea-hypopnea index of 34"],
        "plan": ["start inhaled corticosteroid and long-acting bronchodilator", "oral antibiotics and repeat chest film in 6 weeks",
                 "refer for bronchoscopy and biopsy", "pulmonary rehabilitation and smoking cessation", "CPAP titration",
                 "diagnostic thoracentesis"],
    },
    "gastroenterology": {
        "complaint": ["epigastric burning after meals", "bright red blood per rectum", "difficulty swallowing solids",
                      "chronic diarrhoea with weight loss", "right upper quadrant pain after fatty food", "black tarry stools",
                      "abdominal bloating and altered bowel habit"],
        "finding": ["endoscopy shows a duodenal ulcer", "colonoscopy reveals a 1 cm sessile polyp", "liver enzymes elevated with ALT 240",
                    "ultrasound shows gallstones with a thickened wall", "faecal calprotectin is raised",
                    "haemoglobin has dropped from 13 to 9", "tissue transglutaminase antibodies are positive"],
        "plan": ["start a proton pump inhibitor and test for H. pylori", "book upper endoscopy", "refer for cholecystectomy",
                 "gluten-free diet and dietitian review", "repeat colonoscopy in 3 years", "begin mesalazine"],
    },
    "neurology": {
        "complaint": ["sudden weakness of the right arm and slurred speech", "recurrent throbbing headaches with aura",
                      "a first generalised seizure", "numbness and tingling in both feet", "tremor at rest in the left hand",
                      "episodes of double vision", "memory lapses noticed by the family"],
        "finding": ["MRI shows an acute left MCA territory infarct", "EEG shows focal epileptiform discharges",
                    "nerve conduction studies show a length-dependent neuropathy", "cogwheel rigidity and bradykinesia on exam",
                    "periventricular white matter lesions on MRI", "reduced MMSE score of 22/30", "positive Romberg sign"],
        "plan": ["thrombolysis pathway activated", "start levetiracetam and advise no driving", "trial of triptan and migraine diary",
                 "start levodopa", "lumbar puncture for oligoclonal bands", "refer to memory clinic"],
    },
    "orthopedics": {
        "complaint": ["knee pain and locking after a twisting injury", "hip pain on weight bearing", "a swollen, deformed wrist after a fall",
                      "shoulder pain when lifting the arm overhead", "ankle sprain with inability to bear weight",
                      "stiffness in the hands worse in the morning", "heel pain on first steps in the morning"],
        "finding": ["X-ray shows a displaced distal radius fracture", "MRI confirms a medial meniscus tear",
                    "joint space narrowing and osteophytes on hip films", "positive Lachman test", "rotator cuff tear on ultrasound",
                    "tenderness over the lateral malleolus", "stress fracture of the second metatarsal"],
        "plan": ["closed reduction and cast immobilisation", "arthroscopic meniscal repair", "refer for total hip arthroplasty",
                 "physiotherapy and activity modification", "open reduction and internal fixation", "boot and partial weight bearing"],
    },
    "dermatology": {
        "complaint": ["an itchy scaly rash on the elbows", "a changing pigmented mole on the back", "facial redness and pustules",
                      "blistering lesions on the forearms", "hair loss in round patches", "a non-healing ulcerated lesion on the nose",
                      "widespread hives after a new medication"],
        "finding": ["silvery plaques on extensor surfaces", "dermoscopy shows an atypical pigment network",
                    "biopsy confirms basal cell carcinoma", "positive Nikolsky sign", "well-demarcated patches of alopecia",
                    "comedones and inflammatory papules", "annular lesion with central clearing, KOH positive"],
        "plan": ["topical corticosteroid and emollients", "excision with 2 mm margins", "start isotretinoin with monitoring",
                 "refer for Mohs surgery", "topical antifungal for four weeks", "start narrowband UVB phototherapy"],
    },
}

# Shared complaints: the specialty is told only by the finding or plan (confusable cases).
SHARED = {
    "chest pain": ["cardiology", "gastroenterology", "pulmonology", "orthopedics"],
    "shortness of breath": ["cardiology", "pulmonology"],
    "dizziness": ["cardiology", "neurology"],
    "back pain radiating down the leg": ["orthopedics", "neurology"],
    "abdominal pain": ["gastroenterology", "dermatology"],
    "itching": ["dermatology", "gastroenterology"],
    "fatigue": ["cardiology", "gastroenterology", "neurology", "pulmonology"],
    "joint pain with a rash": ["dermatology", "orthopedics"],
}
SHARED_FINDING = {
    ("chest pain", "gastroenterology"): ["worse lying flat after meals, normal ECG and troponin", "oesophageal pH study confirms reflux"],
    ("chest pain", "pulmonology"): ["CT pulmonary angiogram shows a segmental embolus", "pneumothorax on chest film"],
    ("chest pain", "orthopedics"): ["reproducible tenderness over the costochondral junction, normal ECG", "rib fracture on X-ray after a fall"],
    ("back pain radiating down the leg", "neurology"): ["saddle anaesthesia and reduced anal tone", "weakness of ankle dorsiflexion with an MRI showing demyelination"],
    ("back pain radiating down the leg", "orthopedics"): ["MRI shows an L5-S1 disc herniation", "spondylolisthesis at L4-5 on lateral films"],
    ("dizziness", "neurology"): ["nystagmus and a positive Dix-Hallpike manoeuvre", "ataxic gait with a cerebellar lesion on MRI"],
    ("abdominal pain", "dermatology"): ["palpable purpura on the legs suggesting vasculitis", "a dermatomal vesicular rash appeared the next day"],
    ("itching", "gastroenterology"): ["jaundice with raised alkaline phosphatase", "positive antimitochondrial antibodies"],
    ("fatigue", "gastroenterology"): ["iron deficiency anaemia with positive faecal occult blood", "raised transaminases and ferritin"],
    ("fatigue", "neurology"): ["fatigable ptosis and positive acetylcholine receptor antibodies", "optic neuritis history and MRI lesions"],
    ("fatigue", "pulmonology"): ["nocturnal desaturation on oximetry", "bilateral hilar lymphadenopathy on chest X-ray"],
    ("joint pain with a rash", "dermatology"): ["nail pitting and scalp plaques", "malar rash sparing the nasolabial folds"],
    ("joint pain with a rash", "orthopedics"): ["septic arthritis aspirate with a cellulitic knee", "effusion after a fall with overlying abrasion"],
}

STYLE = ["{patient} presents with {complaint} {duration}. {finding_cap}. Plan: {plan}.",
         "{patient} with {complaint} {duration}; {finding}. {plan_cap}.",
         "Referred for {complaint}. {finding_cap}. {plan_cap}.",
         "C/o {complaint} {duration}. O/E {finding}. Plan {plan}.",
         "{patient} reports {complaint}. Impression after work-up: {finding}."]


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def snippet(rng: random.Random, complaint: str, finding: str, plan: str) -> str:
    sex = rng.choice(SEXES)
    patient = rng.choice(PATIENT).format(age=rng.randint(18, 92), sex=sex, sex_cap=cap(sex))
    text = rng.choice(STYLE).format(
        patient=patient, complaint=complaint, duration=rng.choice(DURATION), finding=finding,
        finding_cap=cap(finding), plan=plan, plan_cap=cap(plan),
    )
    return " ".join(text.split()).replace(" .", ".").replace(" ;", ";")


def main() -> None:
    rng = random.Random(SEED)
    rows: list[tuple[str, str]] = []
    labels = list(SPECIALTY)
    generic = ["work-up so far is unremarkable", "bloods are within normal limits", "examination is largely normal",
               "vital signs are stable", "no red flags on history"]
    for label, vocab in SPECIALTY.items():
        n_shared = int(PER_CLASS * 0.35)
        n_crossed = int(PER_CLASS * 0.15)
        n_vague = int(PER_CLASS * 0.08)
        n_easy = PER_CLASS - n_shared - n_crossed - n_vague
        for _ in range(n_easy):
            rows.append((snippet(rng, rng.choice(vocab["complaint"]), rng.choice(vocab["finding"]), rng.choice(vocab["plan"])), label))
        shared = [c for c, owners in SHARED.items() if label in owners]
        for _ in range(n_shared):  # a complaint several specialties share; only finding or plan tells
            complaint = rng.choice(shared)
            if rng.random() < 0.3:
                finding, plan = rng.choice(generic), rng.choice(vocab["plan"])
            else:
                finding = rng.choice(SHARED_FINDING.get((complaint, label), vocab["finding"]))
                plan = rng.choice(vocab["plan"]) if rng.random() < 0.4 else "review in clinic"
            rows.append((snippet(rng, complaint, finding, plan), label))
        for _ in range(n_crossed):  # complaint of another specialty; the work-up points here
            other = SPECIALTY[rng.choice([x for x in labels if x != label])]
            rows.append((snippet(rng, rng.choice(other["complaint"]), rng.choice(vocab["finding"]), "review in clinic"), label))
        for _ in range(n_vague):  # little to go on: a shared complaint and a generic finding
            complaint = rng.choice(shared)
            rows.append((snippet(rng, complaint, rng.choice(generic), "review in clinic"), label))
    seen: set[str] = set()
    rows = [r for r in rows if not (r[0] in seen or seen.add(r[0]))]  # no duplicate texts across splits
    rng.shuffle(rows)
    out = Path(__file__).resolve().parents[1] / "src" / "medclf" / "demo" / "clinical_snippets.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "specialty"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
