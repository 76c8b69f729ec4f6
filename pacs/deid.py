"""De-identification for shared links (PS3.15 Annex E, Basic Application Level Confidentiality Profile).

dicognito does the replacing part: person names, IDs, UIDs, addresses, equipment, dates.
It is seeded per link, so the same original UID becomes the same new UID on every request
of that link (instances stay linked into their series and study), and differently for
another link. On top of it we apply what the Basic Profile removes outright and dicognito
keeps: free-text descriptions and comments, private elements, overlay comments, and the
other attributes in :data:`REMOVE`. Pixel data is never touched (images stay intact);
images whose Burned In Annotation is YES are reported by :func:`has_burned_in_text`.

Dates are shifted by a per-link offset rather than emptied (PS3.15 E.3.6, Retain
Longitudinal Temporal Information with Modified Dates Option), so intervals between
studies stay readable. Age, sex, size and weight are kept (E.3.7, Retain Patient
Characteristics Option): a consultant reads a chest film differently at 8 and at 80; the
age is derived from the birth date when the modality did not send it, then the birth date
is emptied. Both options are recorded in the de-identification method.

The patient's name and ID become an obvious label (``ANON^3FA9C21B``, ``ANON-3FA9C21B``,
stable within the link) rather than dicognito's realistic fake names: a doctor reading a
shared study must never mistake it for a real, different patient.
"""

from __future__ import annotations

import hashlib

from dicognito.anonymizer import Anonymizer
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

#: Attributes the Basic Profile removes (action X, or Z/D/X that we satisfy by removing) and
#: that dicognito leaves in place: free text that may name the patient or the hospital.
REMOVE = (
    "StudyDescription", "SeriesDescription", "ImageComments", "PatientComments",
    "AdditionalPatientHistory", "AdmittingDiagnosesDescription", "DerivationDescription",
    "InterpretationText", "RequestAttributesSequence", "ReasonForStudy", "RequestedProcedureDescription",
    "PerformedProcedureStepDescription", "ScheduledProcedureStepDescription", "ProtocolName",
    "AcquisitionComments", "ContrastBolusAgent", "DeviceSerialNumber", "PatientState",
    "MedicalAlerts", "Allergies", "EthnicGroup", "PregnancyStatus", "SmokingStatus",
    "SpecialNeeds", "PatientAddress", "PatientMotherBirthName", "PatientBirthName",
    "OtherPatientNames", "OtherPatientIDsSequence", "PatientBirthTime", "CountryOfResidence",
    "RegionOfResidence", "MilitaryRank", "PersonAddress", "PersonTelephoneNumbers",
    "InstitutionalDepartmentName", "InstitutionAddress", "InstitutionName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "ReferringPhysicianIdentificationSequence",
    "PhysiciansOfRecordIdentificationSequence", "PerformingPhysicianIdentificationSequence",
    "OperatorIdentificationSequence", "ReferencedPatientSequence", "ReferencedStudySequence",
    "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "PatientInsurancePlanCodeSequence",
    "TextString", "TextComments", "VisitComments", "ServiceEpisodeDescription", "IdentifyingComments",
    "FrameComments", "ResultsComments", "ImagePresentationComments", "TopicTitle", "TopicAuthor",
    "TopicSubject", "TopicKeywords", "DigitalSignaturesSequence", "OriginalAttributesSequence",
    "ModifiedAttributesSequence", "ContentCreatorName", "StationName", "Occupation",
)

#: PS3.16 CID 7050 codes recorded in De-identification Method Code Sequence (0012,0064).
METHOD_CODES = (("113100", "Basic Application Confidentiality Profile"),
                ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
                ("113108", "Retain Patient Characteristics Option"))
METHOD = "PS3.15 Basic Profile, modified dates, patient characteristics"  # LO: at most 64


def _strip(ds: Dataset) -> None:
    for keyword in REMOVE:
        if keyword in ds:
            delattr(ds, keyword)
    for elem in list(ds):
        group = elem.tag.group
        # Overlay Comments (60xx,4000) and Overlay Label (60xx,1500) are free text; curves
        # (50xx) are retired and may hold text. Overlay bitmaps stay: they are image content.
        if 0x6000 <= group <= 0x601E and elem.tag.element in (0x4000, 0x1500):
            del ds[elem.tag]
        elif 0x5000 <= group <= 0x501E:
            del ds[elem.tag]
        elif elem.VR == "SQ":
            for item in elem.value:
                _strip(item)


class Deidentifier:
    """De-identifies datasets consistently for one share link (seeded by its secret salt)."""

    def __init__(self, salt: str) -> None:
        self.salt = salt
        self._anonymizer = Anonymizer(seed=salt)

    def dataset(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place and return it (pixel data untouched)."""
        label = pseudonym(self.salt, str(ds.get("PatientID", "")) or str(ds.get("PatientName", "")))
        age = str(ds.get("PatientAge", "")) or _age(str(ds.get("PatientBirthDate", "")),
                                                   str(ds.get("StudyDate", "")))
        ds.remove_private_tags()
        self._anonymizer.anonymize(ds)
        _strip(ds)
        ds.PatientName = label.replace("-", "^", 1)
        ds.PatientID = label
        ds.PatientBirthDate = ""  # Basic Profile action Z; the age below says what matters
        if age:
            ds.PatientAge = age
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        codes = []
        for value, meaning in METHOD_CODES:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(codes)
        ds.SpecificCharacterSet = "ISO_IR 192"
        if "file_meta" in ds.__dict__ and ds.file_meta is not None and "SOPInstanceUID" in ds:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds

    def uid(self, original: str) -> str:
        """The de-identified UID of ``original`` for this link (same as in the datasets)."""
        probe = Dataset()
        probe.file_meta = FileMetaDataset()
        probe.SOPInstanceUID = original
        self._anonymizer.anonymize(probe)
        return str(probe.SOPInstanceUID)


def _age(birth: str, on: str) -> str:
    """PS3.5 AS value (``042Y``) from two DA values, or ``""`` when either is unusable."""
    try:
        b = (int(birth[:4]), int(birth[4:6]), int(birth[6:8]))
        d = (int(on[:4]), int(on[4:6]), int(on[6:8]))
    except ValueError:
        return ""
    years = d[0] - b[0] - ((d[1], d[2]) < (b[1], b[2]))
    if years < 0 or years > 150:
        return ""
    if years >= 2:
        return f"{years:03d}Y"
    months = (d[0] - b[0]) * 12 + d[1] - b[1] - (d[2] < b[2])
    return f"{max(months, 0):03d}M"


def has_burned_in_text(ds: Dataset) -> bool:
    """True when the modality says the pixels carry text (PS3.3 C.7.6.1.1.11): not removable here."""
    return str(ds.get("BurnedInAnnotation", "")).upper() == "YES"


def pseudonym(salt: str, value: str) -> str:
    """A short stable pseudonym for display (e.g. a patient label in the viewer overlay)."""
    return "ANON-" + hashlib.sha256(f"{salt}|{value}".encode()).hexdigest()[:8].upper()
